"""The in-process services other apps call (search indexes documents with them)."""

import pytest

from apps.documents.models import Chunk, Document
from apps.documents.services import embed_document, embed_documents_bulk
from tests.documents.conftest import CallCounter
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def test_bulk_embedding_batches_model_calls_across_documents():
    documents = [DocumentFactory(body=f"## A\n\nFirst {i}.\n\n## B\n\nSecond {i}.") for i in range(5)]
    counter = CallCounter()
    results = embed_documents_bulk([d.pk for d in documents] + [10**9])
    assert counter.calls == 1 and counter.texts == 10
    assert [r.outcome for r in results] == ["embedded"] * 5 + ["missing"]
    assert Chunk.objects.filter(document__in=documents).count() == 10
    assert not Document.objects.exclude(embedding_status="ready").exists()

    again = embed_documents_bulk([d.pk for d in documents])
    assert counter.calls == 1 and {r.outcome for r in again} == {"unchanged"}


def test_a_title_change_re_embeds_every_chunk_because_the_title_is_in_each_input():
    document = DocumentFactory(body="## A\n\nOne.\n\n## B\n\nTwo.")
    embed_document(document.pk)
    Document.objects.filter(pk=document.pk).update(title="A new title")
    counter = CallCounter()
    result = embed_document(document.pk)
    assert result.outcome == "embedded" and result.embedded_chunks == 2 and result.reused_chunks == 0
    assert counter.texts == 2


def test_a_purge_never_strips_a_live_document_of_its_chunks():
    """purge_document runs after a delete; delivered for a document that exists (a restored
    backup, another checkout's broker), it must leave the document's chunks alone."""
    from apps.documents.tasks import purge_document

    live = DocumentFactory(body="Glaciers carve valleys over millennia.")
    embed_document(live.pk)
    chunks = Chunk.objects.filter(document=live).count()
    assert chunks > 0
    assert purge_document(live.pk) == 0
    assert Chunk.objects.filter(document=live).count() == chunks
    gone = DocumentFactory(body="Tides rise and fall twice a day.")
    embed_document(gone.pk)
    gone_id = gone.pk
    gone.delete()
    assert purge_document(gone_id) == 0 and not Chunk.objects.filter(document_id=gone_id).exists()
