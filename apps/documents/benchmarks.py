"""``manage.py bench ingest``: import + embed a BEIR corpus through a real Celery
worker (real model), next to the bare model's throughput on the same chunks.

* The corpus goes into an isolated source (``bench-scifact`` by default), removed
  before and after the run (``--keep`` keeps it).
* The worker is a subprocess started here (prefork, two children with a model
  thread each, like the Procfile: one embeds while the other writes), consuming
  a private queue on a private Redis database, so nothing
  else's tasks are touched — not even by the redelivery of unacknowledged
  messages after ``--kill-worker-after`` (kill -9 of the whole worker, then a new
  one; a short visibility timeout makes the broker redeliver the lost task).
* Pipeline time runs from the first insert until every document is ``ready``
  (model already loaded in the worker). Then the worker is stopped and the bare
  model embeds exactly the same inputs (same chunker, same batch size) in this
  process, so both use the same cores.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from apps.core.bench import print_table, register
from apps.core.worker_process import WorkerProcess
from apps.documents.chunking import chunk_document
from apps.documents.importing import import_records, read_jsonl
from apps.documents.models import Document
from apps.llm.embeddings import get_embedding_backend

BENCH_REDIS_DB = 13
VISIBILITY_TIMEOUT = 30


def _arguments(parser):
    parser.add_argument("--dataset", default=str(Path(settings.BASE_DIR).parent / "shared" / "datasets" / "scifact"),
                        help="BEIR folder (corpus.jsonl) or a corpus.jsonl file")
    parser.add_argument("--limit", type=int, default=1000, help="documents to ingest (0 = all)")
    parser.add_argument("--kill-worker-after", type=int, default=0,
                        help="kill -9 the worker once this many documents are embedded, then restart it")
    parser.add_argument("--source", default="bench-scifact")
    parser.add_argument("--batch", type=int, default=settings.EMBEDDING_ENQUEUE_BATCH, help="documents per task")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--keep", action="store_true", help="keep the imported documents")
    parser.add_argument("--worker-concurrency", type=int, default=2,
                        help="the worker's pool children (the Procfile and docker/compose.yml run 2)")
    parser.add_argument("--worker-threads", type=int, default=1,
                        help="EMBEDDING_THREADS for each child's model (the Procfile and compose: 1; "
                             "0: the runtime's choice, every core)")


class _Worker(WorkerProcess):
    """The bench's worker: its own queue on a private Redis database, short time limits."""

    def __init__(self, queue: str, broker_url: str, *, concurrency: int = 1, threads: int = 0):
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local"),
            CELERY_BROKER_URL=broker_url, CELERY_TASK_DEFAULT_QUEUE=queue,
            CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT), CELERY_TASK_SOFT_TIME_LIMIT="20",
            CELERY_TASK_TIME_LIMIT="25", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
            EMBEDDING_THREADS=str(threads),
        )
        super().__init__(queue=queue, env=env, name="bench-ingest-worker", broker_url=broker_url,
                         concurrency=concurrency)

    def start(self, app=None) -> float:
        return super().start(timeout=180)


def _drop_source(source: str) -> None:
    """Remove a bench source without signals (no purge tasks for thousands of rows)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM documents_chunk WHERE document_id IN "
                       "(SELECT id FROM documents_document WHERE source = %s)", [source])
        cursor.execute("DELETE FROM documents_document WHERE source = %s", [source])


def _flush_bench_broker(broker_url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    client.flushdb()  # the private bench database: queue, unacked index, bindings


def _records(path: Path, limit: int):
    corpus = path / "corpus.jsonl" if path.is_dir() else path
    for n, record in enumerate(read_jsonl(corpus)):
        if limit and n >= limit:
            return
        yield record


def _chunk_stats(source: str, backend) -> dict:
    """Expected chunk sets (same deterministic chunker) vs rows stored."""
    expected: dict[int, list[tuple[int, str]]] = {}
    for pk, title, body in Document.objects.filter(source=source).values_list("pk", "title", "body").iterator():
        drafts = chunk_document(title=title, body=body, backend=backend, target_tokens=settings.DOCUMENT_CHUNK_TOKENS,
                                overlap_tokens=settings.DOCUMENT_CHUNK_OVERLAP)
        expected[pk] = [(d.ordinal, d.content_hash) for d in drafts]
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.document_id, c.ordinal, c.content_hash, c.token_count FROM documents_chunk c "
                       "JOIN documents_document d ON d.id = c.document_id WHERE d.source = %s", [source])
        rows = cursor.fetchall()
    expected_set = {(pk, o, h) for pk, items in expected.items() for o, h in items}
    stored = [(pk, o, h) for pk, o, h, _ in rows]
    matched = sum(1 for row in stored if row in expected_set)
    return {
        "chunks": len(stored),
        "tokens": sum(r[3] for r in rows),
        "expected_chunks": len(expected_set),
        "duplicate_chunks": len(stored) - matched,
        "missing_chunks": len(expected_set) - len(set(stored) & expected_set),
    }


def _model_throughput(backend, inputs: list[str]) -> float:
    batch = getattr(backend, "batch_size", 32)
    backend.embed_documents(inputs[:batch])  # warm-up, like the worker's first task
    started = time.perf_counter()
    for start in range(0, len(inputs), batch * 4):
        backend.embed_documents(inputs[start: start + batch * 4])
    return len(inputs) / (time.perf_counter() - started)


@register("ingest", help="import + embed a BEIR corpus through a real worker vs the bare model",
          arguments=_arguments)
def bench_ingest(*, stdout, options):
    from tqdm import tqdm

    from config.celery_app import app

    source, limit, kill_after = options["source"], options["limit"], options["kill_worker_after"]
    base = settings.CELERY_BROKER_URL.rsplit("/", 1)[0]
    broker_url = f"{base}/{BENCH_REDIS_DB}"
    queue = f"bench-ingest-{os.getpid()}"
    backend = get_embedding_backend()
    _drop_source(source)
    _flush_bench_broker(broker_url, queue)

    worker = _Worker(queue, broker_url, concurrency=options["worker_concurrency"], threads=options["worker_threads"])
    figures: dict = {"source": source, "model": backend.model_id, "backend": type(backend).__name__,
                     "worker_concurrency": options["worker_concurrency"],
                     "worker_threads": options["worker_threads"] or None,
                     "docs_per_task": options["batch"]}
    figures["worker_start_s"] = round(worker.start(app), 2)
    restarts = 0
    try:
        records = list(_records(Path(options["dataset"]), limit))
        # The same inputs the worker will embed (the chunker is deterministic); the
        # bare model runs on them before and after the pipeline, and the mean is
        # used, so load from other processes on the machine hits both sides alike.
        inputs = [d.embed_input for r in records if not r.error for d in chunk_document(
            title=r.title, body=r.body, backend=backend, target_tokens=settings.DOCUMENT_CHUNK_TOKENS,
            overlap_tokens=settings.DOCUMENT_CHUNK_OVERLAP)]
        half = len(inputs) // 2
        model_before = _model_throughput(backend, inputs[:half] or inputs)
        started = time.perf_counter()

        def enqueue(ids: list[int]) -> None:
            with app.connection_for_write(broker_url) as conn:
                for i in range(0, len(ids), options["batch"]):
                    app.send_task("documents.embed_documents_batch", args=[ids[i: i + options["batch"]]],
                                  queue=queue, connection=conn)

        report = import_records(records, source=source, publish=True, batch_size=250, on_batch_committed=enqueue)
        total = report.created + report.updated + report.unchanged
        figures["import_s"] = round(time.perf_counter() - started, 2)
        progress = tqdm(total=total, unit="doc", desc="embedded", file=sys.stderr)
        ready = 0
        killed_at = None
        deadline = time.monotonic() + options["timeout"]
        while ready < total and time.monotonic() < deadline:
            time.sleep(0.25)
            now_ready = Document.objects.filter(source=source, embedding_status="ready").count()
            progress.update(now_ready - ready)
            ready = now_ready
            if kill_after and killed_at is None and ready >= kill_after:
                worker.kill()
                killed_at = ready
                progress.write(f"kill -9 worker at {ready} documents; restarting")
                worker = _Worker(queue, broker_url, concurrency=options["worker_concurrency"],
                                 threads=options["worker_threads"])
                worker.start(app)
                restarts += 1
        elapsed = time.perf_counter() - started
        progress.close()
    finally:
        worker.stop()

    stats = _chunk_stats(source, backend)
    figures.update({
        "documents": total, "import_errors": len(report.errors), "embedded_documents": ready,
        "embedded_pct": round(100 * ready / total, 2) if total else 0.0,
        "chunks": stats["chunks"], "expected_chunks": stats["expected_chunks"],
        "duplicate_chunks": stats["duplicate_chunks"], "missing_chunks": stats["missing_chunks"],
        "tokens": stats["tokens"], "pipeline_s": round(elapsed, 2),
        "docs_per_s": round(total / elapsed, 2), "chunks_per_s": round(stats["chunks"] / elapsed, 2),
        "tokens_per_s": round(stats["tokens"] / elapsed, 1),
    })
    if kill_after:
        figures.update({"kill_worker_after": kill_after, "killed_at_documents": killed_at,
                        "worker_restarts": restarts, "visibility_timeout_s": VISIBILITY_TIMEOUT})

    model_after = _model_throughput(backend, inputs[half:])
    model_cps = (model_before + model_after) / 2
    figures["model_chunks_per_s"] = round(model_cps, 2)
    figures["model_chunks_per_s_before_after"] = [round(model_before, 2), round(model_after, 2)]
    figures["pipeline_ratio"] = round(figures["chunks_per_s"] / model_cps, 3) if model_cps else None
    if not options["keep"]:
        _drop_source(source)
    _flush_bench_broker(broker_url, queue)

    rows = [("pipeline (worker)", figures["docs_per_s"], figures["chunks_per_s"], figures["tokens_per_s"]),
            ("bare model", "", figures["model_chunks_per_s"], "")]
    print_table(stdout, rows, ("path", "docs/s", "chunks/s", "tokens/s"))
    stdout.write(f"pipeline / model = {figures['pipeline_ratio']}; embedded {figures['embedded_pct']} %, "
                 f"duplicate chunks {figures['duplicate_chunks']}, missing {figures['missing_chunks']}")
    return figures
