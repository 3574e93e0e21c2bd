"""Pipeline metrics are exported at /metrics."""

import re

import pytest

from apps.documents.services import embed_document
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def metric(page: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", page, re.M)
    return float(match.group(1)) if match else 0.0


def test_embedding_counters_move_when_a_document_is_embedded(client):
    before = client.get("/metrics").content.decode()
    document = DocumentFactory(body="\n\n".join(f"## Part {i}\n\nText {i}." for i in range(3)))
    embed_document(document.pk)
    embed_document(document.pk)  # unchanged: counted as such, nothing embedded
    after = client.get("/metrics").content.decode()
    assert metric(after, "quire_chunks_embedded_total") - metric(before, "quire_chunks_embedded_total") == 3
    embedded = 'quire_documents_embedded_total{outcome="embedded"}'
    unchanged = 'quire_documents_embedded_total{outcome="unchanged"}'
    assert metric(after, embedded) - metric(before, embedded) == 1
    assert metric(after, unchanged) - metric(before, unchanged) == 1
    assert "quire_embedding_seconds_bucket" in after
