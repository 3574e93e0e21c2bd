import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from apps.core.bench import machine_info, print_table
from apps.search import evaluation
from apps.search.services import MODES


class Command(BaseCommand):
    help = (
        "Load a BEIR dataset into an isolated source, embed it (resumable), run every test query "
        "through hybrid_search and report nDCG@k, Recall@100, MRR@k and latency. Last line: JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument("dataset_dir", type=Path)
        parser.add_argument("--mode", choices=[*MODES, "all"], default="all")
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument("--drop", action="store_true", help="Delete the dataset's documents and exit.")

    def handle(self, *args, dataset_dir: Path, mode: str, k: int, drop: bool, **options):
        for required in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            if not (dataset_dir / required).exists():
                raise CommandError(f"{dataset_dir} is not a BEIR folder: {required} is missing")
        source = evaluation.source_name(dataset_dir)
        if drop:
            deleted = evaluation.drop_corpus(dataset_dir)
            self.stdout.write(f"Dropped {source}: {deleted} rows deleted.")
            return

        with tqdm(desc="loading corpus", unit="doc", file=sys.stderr) as bar:
            added = evaluation.load_corpus(dataset_dir, progress=lambda n: bar.update(n - bar.n))
        self.stdout.write(f"{source}: {added} documents added")
        pending = evaluation.pending_documents(dataset_dir)
        if pending:
            with tqdm(total=len(pending), desc="embedding", unit="doc", file=sys.stderr) as bar:
                evaluation.embed_pending(dataset_dir, progress=bar.update)
        if added or pending:
            evaluation.vacuum_analyze()
        modes = list(MODES) if mode == "all" else [mode]
        figures = {}
        for name in modes:
            with tqdm(desc=f"queries ({name})", unit="q", file=sys.stderr) as bar:
                figures[name] = evaluation.evaluate(dataset_dir, mode=name, k=k, progress=bar.update)
        print_table(
            self.stdout,
            [(name, f[f"ndcg_at_{k}"], f["recall_at_100"], f[f"mrr_at_{k}"], f["p50_ms"], f["p95_ms"], f["queries"])
             for name, f in figures.items()],
            ("mode", f"nDCG@{k}", "Recall@100", f"MRR@{k}", "p50 ms", "p95 ms", "queries"),
        )
        self.stdout.write(f"machine: {json.dumps(machine_info())}")
        self.stdout.write(json.dumps(figures))
