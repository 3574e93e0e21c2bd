"""The embedding pipeline end to end: real Postgres, real Redis, a real Celery
worker subprocess (running the deterministic test backend, whose calls are
counted across processes through Redis)."""

from __future__ import annotations

import pytest
from django.conf import settings

from apps.documents import services
from apps.documents.chunking import chunk_document
from apps.documents.models import Chunk, Document
from apps.documents.tasks import embed_document
from apps.llm.embeddings import get_embedding_backend
from tests.documents.conftest import CallCounter, drain_queue, wait_for, with_result

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SECTIONS = {
    "Installing": "Run make run to create the virtual environment, start PostgreSQL with pgvector and Redis, "
                  "apply migrations and open the site on port eight thousand. Nothing needs Docker.",
    "Searching": "The search box combines keyword ranking with vector similarity and fuses both lists, "
                 "so exact identifiers and loose paraphrases are found alike.",
    "Chatting": "Chat answers questions from the documents you may read and cites every passage it used; "
                "when no language model is configured it answers with the passages themselves.",
    "Operating": "Health endpoints report readiness, metrics are exported for Prometheus and every log "
                 "line is JSON carrying the request id.",
}


def sectioned_body(sections: dict[str, str]) -> str:
    return "\n\n".join(f"## {heading}\n\n{text}" for heading, text in sections.items())


def wait_ready(document_id: int, *, content_hash_not: str | None = None) -> Document:
    def ready():
        doc = Document.objects.filter(pk=document_id).first()
        if doc and doc.embedding_status == Document.EmbeddingStatus.READY and doc.content_hash != content_hash_not:
            return doc
        return None

    return wait_for(ready, message=f"document {document_id} to be embedded")


def assert_one_correct_chunk_set(document: Document) -> list[Chunk]:
    expected = chunk_document(title=document.title, body=document.body, backend=get_embedding_backend(),
                              target_tokens=settings.DOCUMENT_CHUNK_TOKENS,
                              overlap_tokens=settings.DOCUMENT_CHUNK_OVERLAP)
    chunks = list(Chunk.objects.filter(document=document).order_by("ordinal"))
    assert [c.ordinal for c in chunks] == list(range(len(expected)))
    assert [c.content_hash for c in chunks] == [d.content_hash for d in expected]
    assert all(c.embedding is not None and len(c.embedding) == 384 for c in chunks)
    return chunks


def test_saving_a_document_produces_chunks_with_384d_vectors(celery_worker):
    document = services.document_create(title="Getting started with Quire", body=sectioned_body(SECTIONS),
                                        status=Document.Status.PUBLISHED)
    document = wait_ready(document.pk)
    chunks = assert_one_correct_chunk_set(document)
    assert len(chunks) == len(SECTIONS)
    assert [c.heading_path for c in chunks] == list(SECTIONS)
    assert all(c.embedding_model == get_embedding_backend().model_id for c in chunks)
    assert document.embedded_at is not None and document.embedding_error == ""
    # keyword side written with the rows: title words (weight A) and chunk words (weight B)
    with __import__("django").db.connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM documents_chunk WHERE document_id = %s "
                       "AND search_vector @@ to_tsquery('english', 'quire & prometheus')", [document.pk])
        assert cursor.fetchone()[0] == 1


def test_editing_one_paragraph_re_embeds_only_the_changed_chunk(celery_worker):
    document = services.document_create(title="Handbook", body=sectioned_body(SECTIONS))
    document = wait_ready(document.pk)
    before = {c.heading_path: c for c in Chunk.objects.filter(document=document)}
    counter = CallCounter()

    edited = dict(SECTIONS, Chatting=SECTIONS["Chatting"].replace("cites every passage", "always cites passages"))
    services.document_update(document=document, body=sectioned_body(edited))
    document = wait_ready(document.pk, content_hash_not=document.content_hash)

    assert counter.calls == 1
    assert counter.texts == 1  # one chunk's text changed, three vectors were reused
    after = {c.heading_path: c for c in assert_one_correct_chunk_set(document)}
    assert "always cites passages" in after["Chatting"].text
    for heading in ("Installing", "Searching", "Operating"):
        assert after[heading].content_hash == before[heading].content_hash
        assert list(after[heading].embedding) == list(before[heading].embedding)
    assert after["Chatting"].content_hash != before["Chatting"].content_hash


def test_saving_unchanged_content_calls_the_backend_zero_times(celery_worker):
    document = services.document_create(title="Unchanging", body=sectioned_body(SECTIONS))
    document = wait_ready(document.pk)
    chunk_ids = set(Chunk.objects.filter(document=document).values_list("id", flat=True))
    counter = CallCounter()

    document.save()  # full save: the signal enqueues a task
    services.document_update(document=document, summary="A new summary, same title and body")
    drain_queue()

    assert counter.calls == 0
    document.refresh_from_db()
    assert document.embedding_status == Document.EmbeddingStatus.READY
    assert set(Chunk.objects.filter(document=document).values_list("id", flat=True)) == chunk_ids


def test_running_the_task_twice_or_concurrently_leaves_one_chunk_set(celery_worker, worker_factory):
    document = services.document_create(title="Concurrency", body=sectioned_body(SECTIONS) * 3)
    document = wait_ready(document.pk)

    # twice in a row, in process and through the worker: the second run is a no-op
    assert services.embed_document(document.pk).outcome == "unchanged"
    assert with_result(embed_document, document.pk).get(timeout=60)["outcome"] == "unchanged"
    assert_one_correct_chunk_set(document)

    # concurrently: force a rebuild and let three worker processes race on it
    worker_factory(concurrency=2)
    services.mark_embedding_pending([document.pk])
    results = [with_result(embed_document, document.pk) for _ in range(6)]
    outcomes = sorted(r.get(timeout=120)["outcome"] for r in results)
    assert outcomes.count("embedded") == 1, outcomes
    assert set(outcomes) <= {"embedded", "unchanged"}
    document.refresh_from_db()
    assert document.embedding_status == Document.EmbeddingStatus.READY
    assert_one_correct_chunk_set(document)


def test_deleting_a_document_mid_task_leaves_nothing_behind(celery_worker, backend_switches):
    backend_switches.hold(True)
    document = services.document_create(title="Short-lived", body=sectioned_body(SECTIONS))
    document_id = document.pk
    wait_for(lambda: Document.objects.filter(pk=document_id, embedding_status="processing").exists(),
             message="the task to start embedding")
    late = with_result(embed_document, document_id)  # queued behind the held one

    document.delete()
    backend_switches.hold(False)

    assert late.get(timeout=60)["outcome"] == "missing"
    drain_queue()
    assert not Document.objects.filter(pk=document_id).exists()
    assert not Chunk.objects.filter(document_id=document_id).exists()


def test_a_failing_backend_is_retried_then_the_document_is_marked_failed(celery_worker, backend_switches):
    backend_switches.fail(True)
    counter = CallCounter()
    document = services.document_create(title="Doomed", body=sectioned_body(SECTIONS))

    document = wait_for(lambda: Document.objects.filter(pk=document.pk, embedding_status="failed").first(),
                        message="the document to be marked failed")
    attempts = 1 + settings.EMBEDDING_TASK_MAX_RETRIES
    assert counter.calls == attempts
    assert "failure injected" in document.embedding_error
    assert f"after {attempts} attempts" in document.embedding_error
    assert not Chunk.objects.filter(document=document).exists()

    # once the backend recovers, re-embedding (the admin action) succeeds
    backend_switches.fail(False)
    services.mark_embedding_pending([document.pk])
    with_result(embed_document, document.pk).get(timeout=60)
    document.refresh_from_db()
    assert document.embedding_status == Document.EmbeddingStatus.READY
    assert document.embedding_error == ""


def test_an_empty_body_is_allowed_and_produces_no_chunks(celery_worker):
    document = services.document_create(title="Placeholder", body="")
    document = wait_ready(document.pk)
    assert not Chunk.objects.filter(document=document).exists()
