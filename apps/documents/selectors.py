"""Reads of documents. Visibility is defined once, here, and used by every
reader-facing path (pages, API, search SQL, chat retrieval):

* anonymous readers: published + public;
* signed-in users: also published + internal, and anything they authored;
* staff: everything.
Drafts and private documents are therefore only ever seen by their author and staff.
"""

from __future__ import annotations

import json
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.documents.models import Document

PUBLISHED = Document.Status.PUBLISHED
PUBLIC = Document.Visibility.PUBLIC
INTERNAL = Document.Visibility.INTERNAL


def _is_authenticated(user) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def visibility_q(user, *, prefix: str = "") -> Q:
    """A ``Q`` selecting the documents ``user`` may see; ``prefix`` e.g. ``"document__"``."""
    if _is_authenticated(user) and user.is_staff:
        return Q()
    p = prefix
    if not _is_authenticated(user):
        return Q(**{f"{p}status": PUBLISHED, f"{p}visibility": PUBLIC})
    return Q(**{f"{p}status": PUBLISHED, f"{p}visibility__in": [PUBLIC, INTERNAL]}) | Q(**{f"{p}author_id": user.pk})


def visibility_sql(user, *, alias: str = "d") -> tuple[str, list]:
    """The same rule as a SQL predicate over ``documents_document AS <alias>``, with params.

    For raw retrieval SQL (search, chat) so that visibility is decided inside the query.
    """
    if _is_authenticated(user) and user.is_staff:
        return "TRUE", []
    if not _is_authenticated(user):
        return f"({alias}.status = %s AND {alias}.visibility = %s)", [PUBLISHED, PUBLIC]
    return (
        f"(({alias}.status = %s AND {alias}.visibility IN (%s, %s)) OR {alias}.author_id = %s)",
        [PUBLISHED, PUBLIC, INTERNAL, user.pk],
    )


def visibility_scope(user) -> str:
    """A short key naming what ``user`` may see, for caches keyed by permission.

    Two users with the same scope see exactly the same documents.
    """
    if _is_authenticated(user) and user.is_staff:
        return "staff"
    if not _is_authenticated(user):
        return "anonymous"
    return f"user:{user.pk}"


def visible_documents(*, user) -> QuerySet[Document]:
    return Document.objects.filter(visibility_q(user))


# --- pipeline state (staff / operations) ---------------------------------------------------
def embedding_overview() -> dict:
    """Counts by embedding status, chunk totals, the Celery queue depth, and the documents the
    sweep would queue again if the queue were idle (:func:`stranded_documents`)."""
    from django.conf import settings
    from django.db.models import Count

    from apps.documents.models import Chunk
    from apps.llm.embeddings import get_embedding_backend

    counts = dict(Document.objects.values_list("embedding_status").annotate(n=Count("id")).order_by())
    documents = {status: counts.get(status, 0) for status in Document.EmbeddingStatus.values}
    return {
        "documents": documents,
        "chunks": Chunk.objects.count(),
        "chunks_without_vector": Chunk.objects.filter(embedding__isnull=True).count(),
        "model_id": get_embedding_backend().model_id,
        "queue": queue_depth(settings.CELERY_TASK_DEFAULT_QUEUE),
        "stranded": stranded_documents().count(),
    }


def queue_depth(queue: str) -> dict:
    """Messages waiting in a Redis-backed Celery queue (all priority lists), the broker-wide
    count of delivered, unacknowledged messages, and how many of those came from this queue."""
    import redis
    from django.conf import settings

    # kombu's Redis transport keeps priorities 3/6/9 in lists suffixed "\x06\x16<n>", and each
    # delivered, unacknowledged message in the hash "unacked" as [message, exchange, routing key]
    names = [queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9))]
    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=2)
        waiting = sum(client.llen(name) for name in names)
        unacked = client.hvals("unacked")
    except redis.RedisError as exc:
        return {"name": queue, "waiting": None, "unacked": None, "unacked_here": None, "error": str(exc)}
    return {"name": queue, "waiting": waiting, "unacked": len(unacked),
            "unacked_here": sum(1 for raw in unacked if _routing_key(raw) == queue), "error": None}


def queue_idle(depth: dict) -> bool:
    """Whether a :func:`queue_depth` says no task is on its way: reachable, nothing waiting,
    nothing delivered and unacknowledged from that queue."""
    return not depth["error"] and not depth["waiting"] and not depth["unacked_here"]


def _routing_key(raw: bytes) -> str | None:
    try:
        return json.loads(raw)[2]
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def stranded_documents() -> QuerySet[Document]:
    """Documents waiting for an embedding (pending, or processing) that have not changed for
    ``DOCUMENT_REQUEUE_MIN_AGE_SECONDS``: if the queue is idle, no task is on its way for them
    (see apps.documents.tasks.requeue_stranded). The age spares a document saved a moment ago,
    whose task is being sent."""
    from django.conf import settings

    Status = Document.EmbeddingStatus
    since = timezone.now() - timedelta(seconds=settings.DOCUMENT_REQUEUE_MIN_AGE_SECONDS)
    return (Document.objects.filter(embedding_status__in=[Status.PENDING, Status.PROCESSING], updated_at__lt=since)
            .order_by("pk"))


def documents_to_reindex(*, which: str) -> QuerySet[Document]:
    """``all``, ``failed``, or ``stale``: not ready, or embedded from other content
    or another model than the current one (compared by content hash)."""
    if which == "all":
        return Document.objects.all()
    if which == "failed":
        return Document.objects.filter(embedding_status=Document.EmbeddingStatus.FAILED)
    if which != "stale":
        raise ValueError(which)
    from apps.documents.chunking import document_content_hash
    from apps.llm.embeddings import get_embedding_backend

    model_id = get_embedding_backend().model_id
    stale_ids = [
        pk for pk, title, body, content_hash, status in Document.objects.values_list(
            "pk", "title", "body", "content_hash", "embedding_status").iterator(chunk_size=500)
        if status != Document.EmbeddingStatus.READY
        or content_hash != document_content_hash(title=title, body=body, model_id=model_id)
    ]
    return Document.objects.filter(pk__in=stale_ids)
