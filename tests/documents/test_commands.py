"""reindex and embedding_status."""

import io
import re

import pytest
from django.core.management import CommandError, call_command

from apps.documents.models import Chunk, Document
from apps.documents.services import embed_document
from tests.documents.conftest import CallCounter
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_embedding_status_prints_counts_by_status_and_the_queue_depth(settings):
    settings.DOCUMENT_REQUEUE_MIN_AGE_SECONDS = 0
    embed_document(DocumentFactory().pk)
    DocumentFactory(embedding_status="failed")
    DocumentFactory()  # pending, and (inside the test's transaction) never queued
    out = run("embedding_status")
    assert "stranded: 1 documents pending or processing for over 0 s" in out
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


def test_a_batch_size_below_one_is_refused_before_anything_changes(tmp_path):
    document = DocumentFactory()
    embed_document(document.pk)
    # reindex --all marked every document pending, then failed on range(..., 0) or, at -3, queued nothing.
    for command in (["reindex", "--all"], ["import_documents", tmp_path / "corpus.jsonl"], ["count_chunk_tokens"]):
        for size in ("0", "-3"):
            with pytest.raises(CommandError, match=f"{size} is not a positive integer"):
                run(*command, "--batch-size", size)
    document.refresh_from_db()
    assert document.embedding_status == Document.EmbeddingStatus.READY


def test_chunks_keep_their_prompt_token_count_and_older_rows_get_one_from_the_command():
    from apps.llm.tokens import raw_token_count

    document = DocumentFactory(body="## Tides\n\nTides are caused by the Moon. " * 40)
    embed_document(document.pk)
    chunks = list(Chunk.objects.filter(document=document))
    assert chunks and all(c.llm_tokens == raw_token_count(c.text) for c in chunks)  # counted when written

    Chunk.objects.filter(document=document).update(llm_tokens=None)  # as rows from before the column
    out = io.StringIO()
    call_command("count_chunk_tokens", "--no-progress", "--batch-size", "2", stdout=out)
    assert f"counted {len(chunks)} chunks; 0 left" in out.getvalue()
    assert all(c.llm_tokens == raw_token_count(c.text) for c in Chunk.objects.filter(document=document))
