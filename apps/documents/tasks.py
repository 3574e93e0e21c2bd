"""Celery tasks of the embedding pipeline. They take ids, call one service, and
own their retries: transient embedding errors (and database hiccups) are retried
with exponential backoff and full jitter; after the last retry the document is
marked ``failed`` with the error text, which staff see in admin.

Safe under ``acks_late`` redelivery and concurrency: the services are idempotent
(see ``apps.documents.services``). Their results are not stored (the documents' status is
the outcome): sending one needs the broker only, and a broker outage costs a save nothing
(:func:`enqueue`, :func:`requeue_stranded`).
"""

from __future__ import annotations

import random

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as KombuOperationalError
from prometheus_client import Counter
from redis.exceptions import RedisError

from apps.core.degraded import RedisKnownDown, redis_known_down, redis_unavailable
from apps.core.logging import get_logger
from apps.documents import services
from apps.llm.embeddings import EmbeddingError, get_embedding_backend

logger = get_logger("quire.documents.tasks")

TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)
REQUEUED = Counter("quire_documents_requeued_total", "Stranded documents queued again by the sweep")


def retry_delay(retries: int) -> float:
    """Exponential backoff with jitter: uniform in [cap/2, cap], cap = min(max, base * 2**retries).

    Half the window is random so retries of many documents failing together spread
    out, and the other half keeps the delay growing even on unlucky draws."""
    cap = min(settings.EMBEDDING_TASK_BACKOFF_MAX, settings.EMBEDDING_TASK_BACKOFF * (2 ** retries))
    return random.uniform(cap / 2, cap)


def _run(task, document_ids: list[int]) -> list[dict]:
    try:
        results = services.embed_documents_bulk(document_ids)
    except (EmbeddingError, SoftTimeLimitExceeded, *TRANSIENT_DB_ERRORS) as exc:
        transient = getattr(exc, "transient", True)
        final = not transient or task.request.retries >= settings.EMBEDDING_TASK_MAX_RETRIES
        services.EMBEDDING_FAILURES.labels(error=type(exc).__name__, final=str(final).lower()).inc()
        if not final:
            delay = retry_delay(task.request.retries)
            logger.warning("documents.embed_retry", document_ids=document_ids[:20], attempt=task.request.retries + 1,
                           delay_s=round(delay, 3), error=str(exc))
            raise task.retry(exc=exc, countdown=delay) from exc
        services.mark_embedding_failed(
            document_ids, error=f"{type(exc).__name__}: {exc} (after {task.request.retries + 1} attempts)")
        return [{"document_id": i, "outcome": "failed", "error": str(exc)} for i in document_ids]
    return [{"document_id": r.document_id, "outcome": r.outcome, "chunks": r.chunks,
             "embedded_chunks": r.embedded_chunks, "reused_chunks": r.reused_chunks, "tokens": r.tokens}
            for r in results]


@shared_task(bind=True, name="documents.embed_document", acks_late=True, max_retries=None, ignore_result=True)
def embed_document(self, document_id: int) -> dict:
    """Chunk and embed one document (no-op if its content is already embedded)."""
    return _run(self, [int(document_id)])[0]


@shared_task(bind=True, name="documents.embed_documents_batch", acks_late=True, max_retries=None,
             ignore_result=True)
def embed_documents_batch(self, document_ids: list[int]) -> list[dict]:
    """Many documents with batched model calls (imports and reindex enqueue these)."""
    return _run(self, [int(i) for i in document_ids])


@shared_task(name="documents.purge_document", acks_late=True, ignore_result=True)
def purge_document(document_id: int) -> int:
    """After a delete: make sure no chunk of the document survives (the foreign key
    cascades, so this normally deletes nothing; it guards raw deletes).

    Only a document that no longer exists is purged: a purge delivered to the wrong
    database (a restored backup, another checkout's broker) must not strip a live
    document of its chunks while it still reads as embedded.
    """
    from apps.documents.models import Chunk, Document

    if Document.objects.filter(pk=document_id).exists():
        logger.warning("documents.purge_skipped", document_id=document_id, reason="the document exists")
        return 0
    deleted, _ = Chunk.objects.filter(document_id=document_id).delete()
    return deleted


@worker_init.connect
def _prepare_embedding_model(**kwargs):
    """Prepare the model in the worker's main process before it forks its pool: torch's weights
    load there (no task pays the 4-7 s import; children share them copy-on-write), ONNX
    Runtime's export is written there (its session is each child's own, see OnnxBackend.prepare)."""
    _load_model("prepare")


@worker_process_init.connect
def _load_embedding_model(**kwargs):
    """Load the model in each pool child as it starts, so its first task does not wait for it."""
    _load_model("load")


def _load_model(step: str) -> None:
    method = getattr(get_embedding_backend(), step, None)
    if method is not None:
        try:
            method()
        except Exception:  # the first task will raise the same error, with retries
            logger.exception("documents.model_preload_failed", step=step)


BROKER_ERRORS = (KombuOperationalError, RedisError, OSError)


def enqueue(task, *args, queue: str | None = None) -> bool:
    """Send ``task(*args)``, or, if the broker cannot be reached, count it
    (``quire_redis_unavailable_total{component="documents.enqueue"}``) and return False
    (never raise: this runs after a commit that stands, the save must not become a 500).
    The document it was for keeps its ``pending`` status and :func:`requeue_stranded`
    queues it once the broker is back."""
    try:
        if redis_known_down():  # an outage a moment ago: do not make this save wait for the broker's timeouts
            raise RedisKnownDown("the broker failed a moment ago in this process")
        task.apply_async(args=args, queue=queue)
    except BROKER_ERRORS as exc:
        redis_unavailable("documents.enqueue", exc, task=task.name, args=list(args)[:1])
        return False
    return True


def enqueue_embedding_batches(document_ids: list[int], *, batch_size: int | None = None,
                              queue: str | None = None) -> int:
    """Enqueue ``embed_documents_batch`` tasks of ``EMBEDDING_ENQUEUE_BATCH`` ids each.

    Batches keep the broker light for big imports; each task embeds its documents
    with batched model calls. Returns how many documents were queued: fewer than given if
    the broker could not be reached (the rest stay pending, for :func:`requeue_stranded`)."""
    size = batch_size or settings.EMBEDDING_ENQUEUE_BATCH
    ids = list(document_ids)
    for start in range(0, len(ids), size):
        if not enqueue(embed_documents_batch, ids[start: start + size], queue=queue):
            return start
    return len(ids)


@shared_task(name="documents.requeue_stranded", acks_late=False, ignore_result=True)
def requeue_stranded(queue: str | None = None) -> int:
    """Queue again the documents nothing will embed: pending or processing, unchanged for
    ``DOCUMENT_REQUEUE_MIN_AGE_SECONDS``, while the embedding queue is idle (nothing waiting,
    nothing delivered and unacknowledged). That is a document saved while the broker was down
    (its task was never sent), or one whose task was lost with the broker's data. Celery beat
    runs it every ``DOCUMENT_REQUEUE_SECONDS``. Returns how many documents were queued."""
    from apps.documents.selectors import queue_depth, queue_idle, stranded_documents

    queue = queue or settings.CELERY_TASK_DEFAULT_QUEUE
    if not queue_idle(queue_depth(queue)):
        return 0  # busy (its documents may be in it) or unreachable: the next run looks again
    ids = list(stranded_documents().values_list("pk", flat=True))
    if not ids:
        return 0
    queued = enqueue_embedding_batches(ids, queue=queue)
    REQUEUED.inc(queued)
    logger.warning("documents.requeued_stranded", documents=queued, of=len(ids), first_ids=ids[:20])
    return queued


@shared_task(bind=True, name="documents.enrich_document", acks_late=True, max_retries=None, ignore_result=True)
def enrich_document(self, document_id: int) -> str:
    """Suggest a summary and tags for a published document that has none (idempotent)."""
    from apps.documents import enrichment
    from apps.llm.exceptions import LLMRateLimited, LLMTimeout, LLMUnavailable

    try:
        return enrichment.enrich_document(int(document_id))
    except (LLMUnavailable, LLMRateLimited, LLMTimeout, *TRANSIENT_DB_ERRORS) as exc:
        if self.request.retries >= settings.DOCUMENT_ENRICHMENT_MAX_RETRIES:
            logger.warning("documents.enrich_failed", document_id=document_id, error=str(exc))
            return "failed"
        raise self.retry(exc=exc, countdown=retry_delay(self.request.retries)) from exc
