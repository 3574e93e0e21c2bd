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
