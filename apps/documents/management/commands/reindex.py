import math

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count
from tqdm import tqdm

from apps.core.management.arguments import positive_int
from apps.documents import services
from apps.documents.models import Chunk, Document
from apps.documents.selectors import documents_to_reindex
from apps.documents.tasks import enqueue_embedding_batches
from apps.llm.embeddings import get_embedding_backend

# Measured on the 2-core reference machine (docs/benchmarks.md, ingest): MiniLM on CPU.
CHUNKS_PER_SECOND_ESTIMATE = 22.0


class Command(BaseCommand):
    help = (
        "Re-embed documents: --all, --failed, or --stale (not ready, or built from other content or another "
        "model). Prints an estimate (documents, chunks, tokens) first. Enqueues batches for the worker, or "
        "with --sync embeds in this process. Resumable: run it again and it picks up what is left "
        "(--stale); vectors of unchanged chunks are reused."
    )

    def add_arguments(self, parser):
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--all", dest="which", action="store_const", const="all")
        group.add_argument("--failed", dest="which", action="store_const", const="failed")
        group.add_argument("--stale", dest="which", action="store_const", const="stale")
        parser.add_argument("--sync", action="store_true", help="embed here instead of enqueueing")
        parser.add_argument("--dry-run", action="store_true", help="print the estimate only")
        parser.add_argument("--batch-size", type=positive_int, default=settings.EMBEDDING_ENQUEUE_BATCH)
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, which, sync, dry_run, batch_size, no_progress, **options):
        documents = documents_to_reindex(which=which)
        ids = list(documents.order_by("pk").values_list("pk", flat=True))
        estimate = self.estimate(ids)
        minutes = estimate["chunks"] / CHUNKS_PER_SECOND_ESTIMATE / 60
        self.stdout.write(
            f"reindex --{which}: {len(ids)} documents, ~{estimate['chunks']} chunks, ~{estimate['tokens']} tokens "
            f"(~{minutes:.1f} min of model time at {CHUNKS_PER_SECOND_ESTIMATE:.0f} chunks/s, before reuse)"
        )
        if dry_run or not ids:
            return
        if which == "all":
            services.mark_embedding_pending(ids)
        progress = tqdm(total=len(ids), unit="doc", desc=f"reindex {which}", disable=no_progress,
                        file=self.stderr._out)
        outcomes: dict[str, int] = {}
        for start in range(0, len(ids), batch_size):
            batch = ids[start: start + batch_size]
            if sync:
                for result in services.embed_documents_bulk(batch):
                    outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            elif (sent := enqueue_embedding_batches(batch, batch_size=batch_size)) < len(batch):
                progress.close()
                raise CommandError(
                    f"the broker could not be reached: {start + sent} of {len(ids)} documents queued. Run the "
                    "command again once it is back (or embed here with --sync).")
            progress.update(len(batch))
        progress.close()
        if sync:
            self.stdout.write("done: " + ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
        else:
            self.stdout.write(f"queued {len(ids)} documents in {math.ceil(len(ids) / batch_size)} tasks; "
                              f"follow with `manage.py embedding_status`")

    def estimate(self, ids: list[int]) -> dict:
        """Tokens by the model's tokenizer; chunks from the current chunk counts, or from
        tokens for documents never chunked."""
        backend = get_embedding_backend()
        step = max(1, settings.DOCUMENT_CHUNK_TOKENS - settings.DOCUMENT_CHUNK_OVERLAP)
        existing = dict(Chunk.objects.filter(document_id__in=ids).values_list("document_id")
                        .annotate(n=Count("id")).order_by())
        tokens = chunks = 0
        for start in range(0, len(ids), 500):
            rows = list(Document.objects.filter(pk__in=ids[start: start + 500]).values_list("pk", "title", "body"))
            counts = backend.count_tokens_batch([f"{title}\n\n{body}" for _, title, body in rows])
            for (pk, _title, body), count in zip(rows, counts, strict=True):
                tokens += count
                chunks += existing.get(pk) or (math.ceil(count / step) if body.strip() else 0)
        return {"documents": len(ids), "chunks": chunks, "tokens": tokens}
