"""reindex and embedding_status."""

import io
import re

import pytest
from django.core.management import call_command

from apps.documents.models import Chunk, Document
from apps.documents.services import embed_document
from tests.documents.conftest import CallCounter
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_embedding_status_prints_counts_by_status_and_the_queue_depth():
    embed_document(DocumentFactory().pk)
    DocumentFactory(embedding_status="failed")
    DocumentFactory()
    out = run("embedding_status")
    assert re.search(r"^ready\s+1$", out, re.M) and re.search(r"^failed\s+1$", out, re.M)
    assert re.search(r"^pending\s+1$", out, re.M) and re.search(r"^total\s+3$", out, re.M)
    assert "chunks: 1 (0 without a vector)" in out
    assert re.search(r"queue quire-test-\S+: \d+ waiting", out)


def test_reindex_prints_an_estimate_then_re_embeds_only_what_was_asked():
    good = DocumentFactory(body="Healthy content. " * 30)
    embed_document(good.pk)
    failed = [DocumentFactory(body="Words " * 150, embedding_status="failed", embedding_error="boom")
              for _ in range(2)]
    stale = DocumentFactory(body="Old body.")
    embed_document(stale.pk)
    Document.objects.filter(pk=stale.pk).update(body="New body, never embedded.")  # bypasses signals

    estimate = run("reindex", "--failed", "--dry-run")
    assert re.search(r"reindex --failed: 2 documents, ~\d+ chunks, ~\d+ tokens", estimate)
    assert Document.objects.filter(embedding_status="failed").count() == 2  # dry run changed nothing

    counter = CallCounter()
    out = run("reindex", "--failed", "--sync", "--no-progress")
    assert "2 embedded" in out
    assert all(Document.objects.get(pk=d.pk).embedding_status == "ready" for d in failed)

    out = run("reindex", "--stale", "--sync", "--no-progress")
    assert "reindex --stale: 1 documents" in out and "1 embedded" in out
    assert Chunk.objects.get(document=stale).text == "New body, never embedded."
    assert counter.texts == 3  # two failed documents and the stale one; the healthy one untouched
