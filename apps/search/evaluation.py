"""Retrieval quality on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv).

The corpus is loaded into its own ``source`` (``beir:<folder name>``, public and
published), embedded by the documents pipeline, and every test query is run
through :func:`apps.search.services.hybrid_search` — the service the pages and
the API use — restricted to that source so real content never mixes in.
Loading and embedding are resumable: what is stored is reused.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from django.utils.text import slugify

from apps.core.bench import percentile
from apps.documents.models import Document
from apps.documents.services import embed_documents_bulk
from apps.llm.embeddings import get_embedding_backend
from apps.search.services import SearchFilters, hybrid_search

EMBED_BATCH = 64
INSERT_BATCH = 1000


def source_name(dataset_dir: Path) -> str:
    return f"beir:{Path(dataset_dir).resolve().name}"


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def read_qrels(dataset_dir: Path, split: str = "test") -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(Path(dataset_dir) / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qid, doc_id, grade = row[0], row[1], int(row[2])
            if grade > 0:
                qrels.setdefault(qid, {})[doc_id] = grade
    return qrels


def read_queries(dataset_dir: Path, qrels: dict) -> list[tuple[str, str]]:
    return [(q["_id"], q["text"]) for q in _jsonl(Path(dataset_dir) / "queries.jsonl") if q["_id"] in qrels]


def load_corpus(dataset_dir: Path, *, progress: Callable[[int], None] | None = None) -> int:
    """Insert documents of the corpus that are not stored yet; returns how many were added."""
    source = source_name(dataset_dir)
    existing = set(Document.objects.filter(source=source).values_list("external_id", flat=True))
    now = timezone.now()
    batch, added = [], 0
    prefix = slugify(source.replace(":", "-"))
    for row in _jsonl(Path(dataset_dir) / "corpus.jsonl"):
        external_id = str(row["_id"])
        if external_id in existing:
            continue
        title = (row.get("title") or "").strip() or f"Document {external_id}"
        batch.append(Document(
            title=title[:300], slug=f"{prefix}-{slugify(external_id)}"[:320], body=row.get("text") or "",
            source=source, external_id=external_id, status=Document.Status.PUBLISHED,
            visibility=Document.Visibility.PUBLIC, published_at=now,
        ))
        if len(batch) >= INSERT_BATCH:
            added += _insert(batch)
            batch = []
            if progress:
                progress(added)
    added += _insert(batch)
    return added


@transaction.atomic
def _insert(documents: list[Document]) -> int:
    # bulk_create sends no post_save signals, so no embedding tasks are queued:
    # embedding happens below, in this process, batched across documents.
    Document.objects.bulk_create(documents, ignore_conflicts=True)
    return len(documents)


def pending_documents(dataset_dir: Path) -> list[int]:
    return list(
        Document.objects.filter(source=source_name(dataset_dir))
        .exclude(embedding_status=Document.EmbeddingStatus.READY)
        .order_by("id").values_list("id", flat=True)
    )


def embed_pending(dataset_dir: Path, *, progress: Callable[[int], None] | None = None) -> int:
    ids = pending_documents(dataset_dir)
    for start in range(0, len(ids), EMBED_BATCH):
        batch = ids[start : start + EMBED_BATCH]
        embed_documents_bulk(batch)
        if progress:
            progress(len(batch))
    return len(ids)


def vacuum_analyze() -> None:
    """After a bulk load: visibility map for index-only scans over postings, fresh statistics."""
    from django.db import connection

    # VACUUM cannot run inside a transaction (e.g. under a test); ANALYZE can.
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for table in ("documents_document", "documents_chunk", "search_posting", "search_document"):
            cursor.execute(f"{command} {table}")


def drop_corpus(dataset_dir: Path) -> int:
    with transaction.atomic():
        deleted, _ = Document.objects.filter(source=source_name(dataset_dir)).delete()
    return deleted


# --- metrics ----------------------------------------------------------------------------
def ndcg_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    dcg = sum((2 ** relevant.get(doc, 0) - 1) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: list[str], relevant: dict[str, int], k: int) -> float:
    for i, doc in enumerate(ranked[:k]):
        if doc in relevant:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(dataset_dir: Path, *, mode: str, k: int = 10, depth: int = 100,
             progress: Callable[[int], None] | None = None) -> dict:
    """Run every test query in ``mode`` (as an anonymous reader) and score the ranking.

    Ranks 100 documents per query without snippets (``snippets=False``): the same
    SQL ranking the pages run; the latency excludes ts_headline over 100 passages.
    Every query is embedded anew: neither this process's recent queries nor the ones shared
    through Redis (an earlier run's) are used.
    """
    with override_settings(EMBEDDING_QUERY_SHARED_CACHE_SECONDS=0):
        return _evaluate(dataset_dir, mode=mode, k=k, depth=depth, progress=progress)


def _evaluate(dataset_dir: Path, *, mode: str, k: int, depth: int,
              progress: Callable[[int], None] | None) -> dict:
    qrels = read_qrels(dataset_dir)
    queries = read_queries(dataset_dir, qrels)
    source = source_name(dataset_dir)
    external = dict(Document.objects.filter(source=source).values_list("id", "external_id"))
    filters = SearchFilters(sources=[source])
    if queries:  # warm-up: loads the embedding model and the planner's caches, not timed
        hybrid_search(query=queries[0][1], user=None, filters=filters, limit=depth, mode=mode, snippets=False)
    ndcg, recall, mrr, latencies = [], [], [], []
    backend = get_embedding_backend()
    for qid, text in queries:
        backend.clear_query_cache()  # timed as a new query, as in earlier runs (modes share the queries)
        started = time.perf_counter()
        results = hybrid_search(query=text, user=None, filters=filters, limit=depth, mode=mode, snippets=False)
        latencies.append((time.perf_counter() - started) * 1000)
        ranked = [external.get(r.document_id, "") for r in results.results]
        ndcg.append(ndcg_at_k(ranked, qrels[qid], k))
        recall.append(recall_at_k(ranked, qrels[qid], depth))
        mrr.append(mrr_at_k(ranked, qrels[qid], k))
        if progress:
            progress(1)
    n = len(queries) or 1
    return {
        f"ndcg_at_{k}": round(sum(ndcg) / n, 4),
        f"recall_at_{depth}": round(sum(recall) / n, 4),
        f"mrr_at_{k}": round(sum(mrr) / n, 4),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "queries": len(queries),
    }
