"""Writes for documents and the embedding pipeline.

``embed_document(document_id)`` is what the Celery task calls and what other
apps call synchronously (search evaluation, tests); ``embed_documents_bulk``
does the same for many documents with the model calls batched across them.

The pipeline for one document:

1. Under the document's row lock: compute the content hash (title, body,
   model id). Unchanged → nothing to do, **0 backend calls**. Otherwise mark
   ``processing`` and release the lock (embedding is slow; nobody waits on it).
2. Chunk, reuse vectors of chunks whose hash already has one, embed the rest.
3. Under the row lock again: if the document is gone (deleted meanwhile) or
   its content changed (a newer task is queued), write nothing. If another run
   already stored this content, write nothing. Otherwise replace the chunk set
   (rows and tsvectors in one statement) and mark the document ``ready`` in the
   same transaction. So concurrent or redelivered runs leave exactly one
   correct chunk set, and a crash at any point leaves the previous one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import slugify
from prometheus_client import Counter, Histogram

from apps.core.logging import get_logger
from apps.documents.chunking import ChunkDraft, chunk_document, document_content_hash
from apps.documents.models import Chunk, Document
from apps.documents.validators import validate_body_size  # noqa: F401 - re-exported for callers
from apps.llm.embeddings import EmbeddingBackend, get_embedding_backend
from apps.llm.tokens import raw_token_counts

logger = get_logger("quire.documents")

DOCUMENTS_EMBEDDED = Counter(
    "quire_documents_embedded_total", "embed_document outcomes", ["outcome"]
)
CHUNKS_EMBEDDED = Counter("quire_chunks_embedded_total", "Chunks sent to the embedding backend")
CHUNKS_REUSED = Counter("quire_chunks_reused_total", "Chunks whose vector was reused by content hash")
EMBEDDING_SECONDS = Histogram(
    "quire_embedding_seconds", "Wall time of one embedding backend call",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
EMBEDDING_FAILURES = Counter("quire_embedding_failures_total", "Embedding failures", ["error", "final"])

Status = Document.EmbeddingStatus


@dataclass
class EmbedResult:
    """What one ``embed_document`` run did. ``outcome`` is one of:

    ``embedded`` (chunk set replaced), ``unchanged`` (content already embedded,
    0 backend calls), ``stale`` (content changed meanwhile; a newer run will
    embed it), ``missing`` (document does not exist / was deleted).
    """

    document_id: int
    outcome: str
    chunks: int = 0
    embedded_chunks: int = 0  # sent to the backend
    reused_chunks: int = 0    # vector reused by chunk hash
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class _Plan:
    document_id: int
    title: str
    content_hash: str
    drafts: list[ChunkDraft]
    vectors: dict[str, list[float]] = field(default_factory=dict)
    embedded: int = 0
    reused: int = 0


# --- document writes ------------------------------------------------------------------
def unique_slug(title: str, *, exclude_id: int | None = None) -> str:
    base = slugify(title)[:300] or "document"
    slug, n = base, 2
    existing = Document.objects.exclude(pk=exclude_id) if exclude_id else Document.objects.all()
    while existing.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def document_create(*, title: str, body: str = "", author=None, **fields) -> Document:
    """Create a document (validated, slug generated if missing); embedding follows on commit."""
    document = Document(title=title, body=body, author=author, **fields)
    if not document.slug:
        document.slug = unique_slug(title)
    return _validate_and_save(document)


def _validate_and_save(document: Document) -> Document:
    if document.status == Document.Status.PUBLISHED and document.published_at is None:
        document.published_at = timezone.now()
    document.full_clean()
    document.save()
    return document


@transaction.atomic
def document_update(*, document: Document, **fields) -> Document:
    """Update fields; a change to title/body resets the embedding status to pending."""
    content_changed = any(k in fields and fields[k] != getattr(document, k) for k in ("title", "body"))
    for name, value in fields.items():
        setattr(document, name, value)
    if content_changed and document.embedding_status != Status.PROCESSING:
        document.embedding_status = Status.PENDING
    return _validate_and_save(document)


@transaction.atomic
def document_delete(*, document: Document) -> None:
    document.delete()


def documents_publish(*, document_ids: Iterable[int]) -> int:
    """Publish documents (published_at kept if set). Returns how many changed."""
    now = timezone.now()
    with transaction.atomic():
        changed = 0
        for document in Document.objects.select_for_update().filter(pk__in=list(document_ids)):
            if document.status != Document.Status.PUBLISHED:
                document.status = Document.Status.PUBLISHED
                document.published_at = document.published_at or now
                document.save(update_fields=["status", "published_at", "updated_at"])
                changed += 1
    return changed


def documents_unpublish(*, document_ids: Iterable[int]) -> int:
    with transaction.atomic():
        changed = 0
        for document in Document.objects.select_for_update().filter(pk__in=list(document_ids)):
            if document.status != Document.Status.DRAFT:
                document.status = Document.Status.DRAFT
                document.save(update_fields=["status", "updated_at"])
                changed += 1
    return changed


# --- embedding pipeline -----------------------------------------------------------------
def embed_document(document_id: int, *, backend_alias: str = "default") -> EmbedResult:
    """Bring one document's chunk set up to date (idempotent; see module docstring)."""
    return embed_documents_bulk([document_id], backend_alias=backend_alias)[0]


def embed_documents_bulk(document_ids: Iterable[int], *, backend_alias: str = "default") -> list[EmbedResult]:
    """``embed_document`` for many documents, with one batched backend call for all
    chunks that need a vector. Results are in the order of ``document_ids``.

    Raises the backend's ``EmbeddingError`` if embedding fails (nothing is written
    then; documents marked ``processing`` stay so until a retry or
    :func:`mark_embedding_failed`).
    """
    backend = get_embedding_backend(backend_alias)
    started = time.perf_counter()
    ids = list(dict.fromkeys(int(i) for i in document_ids))
    results: dict[int, EmbedResult] = {}
    plans: list[_Plan] = []
    for document_id in ids:
        plan_or_result = _prepare(document_id, backend)
        if isinstance(plan_or_result, EmbedResult):
            results[document_id] = plan_or_result
        else:
            plans.append(plan_or_result)

    _fill_vectors(plans, backend)

    for plan in plans:
        results[plan.document_id] = _store(plan, backend)
    elapsed = time.perf_counter() - started
    for result in results.values():
        result.seconds = elapsed
        DOCUMENTS_EMBEDDED.labels(outcome=result.outcome).inc()
        if result.outcome == "embedded":
            logger.info("documents.embedded", document_id=result.document_id, chunks=result.chunks,
                        embedded_chunks=result.embedded_chunks, reused_chunks=result.reused_chunks,
                        tokens=result.tokens, seconds=round(elapsed, 3), model=backend.model_id)
    return [results[i] for i in ids]


def _prepare(document_id: int, backend: EmbeddingBackend) -> _Plan | EmbedResult:
    with transaction.atomic():
        document = (Document.objects.select_for_update(of=("self",))
                    .only("id", "title", "body", "content_hash", "embedding_status")
                    .filter(pk=document_id).first())
        if document is None:
            return EmbedResult(document_id, "missing")
        content_hash = document_content_hash(title=document.title, body=document.body, model_id=backend.model_id)
        if content_hash == document.content_hash:
            if document.embedding_status != Status.READY:
                Document.objects.filter(pk=document_id).update(embedding_status=Status.READY, embedding_error="")
            chunks = Chunk.objects.filter(document_id=document_id).count()
            return EmbedResult(document_id, "unchanged", chunks=chunks)
        if document.embedding_status != Status.PROCESSING:
            Document.objects.filter(pk=document_id).update(embedding_status=Status.PROCESSING)
        title, body = document.title, document.body
    drafts = chunk_document(
        title=title, body=body, backend=backend,
        target_tokens=settings.DOCUMENT_CHUNK_TOKENS, overlap_tokens=settings.DOCUMENT_CHUNK_OVERLAP,
    )
    return _Plan(document_id=document_id, title=title, content_hash=content_hash, drafts=drafts)


def _fill_vectors(plans: list[_Plan], backend: EmbeddingBackend) -> None:
    wanted = {d.content_hash for plan in plans for d in plan.drafts}
    known: dict[str, list[float]] = {}
    if wanted:
        # Only the documents' own current chunks: a document never depends on another's rows.
        rows = (Chunk.objects.filter(document_id__in=[p.document_id for p in plans], content_hash__in=wanted,
                                     embedding_model=backend.model_id, embedding__isnull=False)
                .order_by("content_hash").distinct("content_hash").values_list("content_hash", "embedding"))
        known = {h: list(v) for h, v in rows}
    to_embed: dict[str, str] = {}
    for plan in plans:
        for draft in plan.drafts:
            if draft.content_hash in known:
                plan.reused += 1
            else:
                to_embed.setdefault(draft.content_hash, draft.embed_input)
                plan.embedded += 1
    if to_embed:
        t0 = time.perf_counter()
        try:
            vectors = backend.embed_documents(list(to_embed.values()))
        finally:
            EMBEDDING_SECONDS.observe(time.perf_counter() - t0)
        known.update(zip(to_embed.keys(), vectors, strict=True))
        CHUNKS_EMBEDDED.inc(len(to_embed))
    CHUNKS_REUSED.inc(sum(p.reused for p in plans))
    for plan in plans:
        plan.vectors = {d.content_hash: known[d.content_hash] for d in plan.drafts}


_INSERT_CHUNKS = """
INSERT INTO documents_chunk
    (document_id, ordinal, text, heading_path, token_count, llm_tokens, content_hash, embedding, embedding_model,
     search_vector)
SELECT %s, u.ordinal, u.text, u.heading_path, u.token_count, u.llm_tokens, u.content_hash, u.embedding::vector, %s,
       setweight(to_tsvector('english', %s), 'A') || setweight(to_tsvector('english', u.text), 'B')
FROM unnest(%s::int[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], %s::text[])
     AS u(ordinal, text, heading_path, token_count, llm_tokens, content_hash, embedding)
"""


def _store(plan: _Plan, backend: EmbeddingBackend) -> EmbedResult:
    result = EmbedResult(plan.document_id, "embedded", chunks=len(plan.drafts), embedded_chunks=plan.embedded,
                         reused_chunks=plan.reused, tokens=sum(d.token_count for d in plan.drafts))
    with transaction.atomic():
        document = (Document.objects.select_for_update(of=("self",))
                    .only("id", "title", "body", "content_hash").filter(pk=plan.document_id).first())
        if document is None:
            return EmbedResult(plan.document_id, "missing")
        current = document_content_hash(title=document.title, body=document.body, model_id=backend.model_id)
        if current != plan.content_hash:
            logger.info("documents.embed_stale", document_id=plan.document_id)
            return EmbedResult(plan.document_id, "stale")
        if document.content_hash == plan.content_hash:  # a concurrent run stored it first
            return EmbedResult(plan.document_id, "unchanged", chunks=len(plan.drafts))
        existing = list(Chunk.objects.filter(document_id=plan.document_id)
                        .order_by("ordinal").values_list("content_hash", flat=True))
        if existing != [d.content_hash for d in plan.drafts]:
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM documents_chunk WHERE document_id = %s", [plan.document_id])
                if plan.drafts:
                    cursor.execute(_INSERT_CHUNKS, [
                        plan.document_id, backend.model_id, plan.title,
                        [d.ordinal for d in plan.drafts],
                        [d.text for d in plan.drafts],
                        [d.heading_path for d in plan.drafts],
                        [d.token_count for d in plan.drafts],
                        raw_token_counts([d.text for d in plan.drafts]),
                        [d.content_hash for d in plan.drafts],
                        [_vector_literal(plan.vectors[d.content_hash]) for d in plan.drafts],
                    ])
        Document.objects.filter(pk=plan.document_id).update(
            content_hash=plan.content_hash, embedding_status=Status.READY,
            embedded_at=timezone.now(), embedding_error="",
        )
    return result


def count_chunk_tokens(*, batch_size: int = 2000) -> Iterator[int]:
    """Fill ``Chunk.llm_tokens`` where it is null (rows written before the column existed).

    Idempotent and resumable: each batch is its own statement, so an interrupted run keeps
    what it counted. Yields the number of chunks counted per batch (for progress).
    """
    last_id = 0
    while True:
        rows = list(Chunk.objects.filter(id__gt=last_id, llm_tokens__isnull=True)
                    .order_by("id").values_list("id", "text")[:batch_size])
        if not rows:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE documents_chunk c SET llm_tokens = u.n FROM unnest(%s::bigint[], %s::int[]) AS u(id, n) "
                "WHERE c.id = u.id AND c.llm_tokens IS NULL",
                [[chunk_id for chunk_id, _ in rows], raw_token_counts([text for _, text in rows])],
            )
        last_id = rows[-1][0]
        yield len(rows)


def _vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def mark_embedding_failed(document_ids: Iterable[int], *, error: str) -> int:
    """Mark documents ``failed`` with the error text staff see in admin.

    Documents whose content was embedded meanwhile (``ready``) are left alone.
    """
    ids = list(document_ids)
    updated = (Document.objects.filter(pk__in=ids).exclude(embedding_status=Status.READY)
               .update(embedding_status=Status.FAILED, embedding_error=error[:4000]))
    logger.warning("documents.embed_failed", document_ids=ids[:50], error=error[:500])
    return updated


def mark_embedding_pending(document_ids: Iterable[int]) -> int:
    """Reset to ``pending`` (admin re-embed, reindex) and forget the content hash so
    the next run rebuilds the chunk set (vectors are still reused by chunk hash)."""
    return Document.objects.filter(pk__in=list(document_ids)).update(
        embedding_status=Status.PENDING, content_hash="", embedding_error="")
