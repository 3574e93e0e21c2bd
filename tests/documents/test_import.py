"""import_documents, load_demo_content: formats, bad lines, idempotence, batching."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from apps.documents.models import Chunk, Document
from tests.documents.conftest import wait_for
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def run_import(*args):
    out, err = io.StringIO(), io.StringIO()
    error = None
    try:
        call_command("import_documents", *map(str, args), "--no-progress", stdout=out, stderr=err)
    except CommandError as exc:
        error = exc
    return out.getvalue(), err.getvalue(), error


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def beir_line(i, text="Some abstract text about cells."):
    return json.dumps({"_id": f"d{i}", "title": f"Paper {i}", "text": text})


def test_a_bad_line_is_reported_with_its_number_and_nothing_of_it_is_imported(tmp_path):
    corpus = write_lines(tmp_path / "corpus.jsonl", [
        beir_line(1), beir_line(2),
        '{"_id": "d3", "title": "Broken", "text": "unterminated',      # line 3: invalid JSON
        beir_line(4),
        json.dumps({"_id": "d5", "title": "No text"}),                   # line 5: no text
        json.dumps({"_id": "d6", "title": "x" * 400, "text": "long"}),   # line 6: title too long
        json.dumps({"_id": "d7", "title": "Nul", "text": "a\x00b"}),      # line 7: PostgreSQL cannot store it
        # Lines 8-11 each stopped the whole import (UnicodeEncodeError, RecursionError, ValueError):
        '{"_id": "d8", "title": "Half", "text": "a \\ud83d pair"}',       # line 8: a lone surrogate
        '{"_id": "d9", "title": "\\udfff", "text": "ok"}',                # line 9: in the title
        '{"_id": "d10", "text": ' + "[" * 5000 + "]" * 5000 + "}",       # line 10: nested too deeply
        '{"_id": ' + "1" * 5000 + ', "title": "Big", "text": "ok"}',     # line 11: a 5000-digit number
        beir_line(12),
    ])
    out, err, error = run_import(corpus, "--source", "scifact-mini", "--no-embed")

    assert error is not None and error.returncode == 1
    assert "corpus.jsonl:3: invalid JSON" in err
    assert "corpus.jsonl:5: missing 'text'" in err
    assert "corpus.jsonl:6: title: Ensure this value has at most 300 characters" in err
    assert "corpus.jsonl:7: body contains a NUL character (\\u0000)" in err
    assert "corpus.jsonl:8: body contains a lone surrogate (U+D83D)" in err
    assert "corpus.jsonl:9: title contains a lone surrogate (U+DFFF)" in err
    assert "corpus.jsonl:10: invalid JSON: JSON nested too deeply" in err
    assert "corpus.jsonl:11: invalid JSON: Exceeds the limit (4300 digits)" in err
    assert "4 created" in out and "8 failed" in out
    imported = set(Document.objects.filter(source="scifact-mini").values_list("external_id", flat=True))
    assert imported == {"d1", "d2", "d4", "d12"}


def test_reimport_is_idempotent_and_updates_changed_documents(tmp_path):
    corpus = write_lines(tmp_path / "corpus.jsonl", [beir_line(i) for i in range(5)])
    run_import(corpus, "--source", "s", "--no-embed", "--publish", "--visibility", "internal")
    first = {d.external_id: d for d in Document.objects.filter(source="s")}
    assert len(first) == 5
    assert all(d.status == "published" and d.visibility == "internal" and d.published_at for d in first.values())

    write_lines(corpus, [beir_line(i) for i in range(5)] + [beir_line(0, "A corrected abstract.")])
    out, _, error = run_import(corpus, "--source", "s", "--no-embed", "--publish")
    assert error is None
    assert "0 created, 1 updated, 4 unchanged" in out
    assert Document.objects.filter(source="s").count() == 5
    assert Document.objects.get(source="s", external_id="d0").body == "A corrected abstract."
    assert Document.objects.get(source="s", external_id="d1").slug == first["d1"].slug


@override_settings(DOCUMENT_MAX_BODY_BYTES=1000)
def test_a_body_above_the_limit_is_rejected_with_a_clear_error(tmp_path):
    corpus = write_lines(tmp_path / "big.jsonl", [
        json.dumps({"title": "Fine", "body": "small"}),
        json.dumps({"title": "Huge", "body": "é" * 600}),
    ])
    _, err, error = run_import(corpus, "--no-embed")
    assert error is not None
    assert "big.jsonl:2: body: The body is 1,200 bytes; the maximum is 1,000 bytes" in err
    assert list(Document.objects.values_list("title", flat=True)) == ["Fine"]


def test_generic_jsonl_and_markdown_folders(tmp_path):
    generic = write_lines(tmp_path / "notes.jsonl", [
        json.dumps({"title": "Release notes", "body": "# v1\n\nFirst.", "tags": ["release", "notes"],
                    "slug": "release-notes"}),
        json.dumps({"title": "Roadmap", "body": "Next things.", "tags": "plans, roadmap"}),
    ])
    run_import(generic, "--no-embed")
    notes = Document.objects.get(slug="release-notes")
    assert notes.source == "notes" and notes.tags == ["release", "notes"] and notes.status == "draft"
    assert Document.objects.get(title="Roadmap").tags == ["plans", "roadmap"]

    folder = tmp_path / "handbook"
    (folder / "ops").mkdir(parents=True)
    (folder / "intro.md").write_text("---\ntitle: Welcome\ntags: intro\n---\n# Welcome\n\nHello there.\n")
    (folder / "ops" / "backups.md").write_text("# Backups\n\nDump nightly.\n")
    (folder / "todo.txt").write_text("Plain text notes.\n")
    (folder / "image.png").write_bytes(b"\x89PNG")
    run_import(folder, "--no-embed")
    docs = {d.external_id: d for d in Document.objects.filter(source="handbook")}
    assert set(docs) == {"intro.md", "ops/backups.md", "todo.txt"}
    assert docs["intro.md"].title == "Welcome" and docs["intro.md"].tags == ["intro"]
    assert docs["intro.md"].body == "Hello there."  # the title heading is not repeated
    assert docs["ops/backups.md"].title == "Backups"
    assert docs["todo.txt"].title == "todo"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_imported_documents_are_embedded_by_the_worker_in_batches(tmp_path, celery_worker):
    corpus = write_lines(tmp_path / "corpus.jsonl", [beir_line(i, f"Abstract number {i} on genes.") for i in range(45)])
    with override_settings(EMBEDDING_ENQUEUE_BATCH=10):
        out, _, error = run_import(corpus, "--source", "batched", "--publish")
    assert error is None and "45 queued for embedding" in out
    wait_for(lambda: not Document.objects.filter(source="batched").exclude(embedding_status="ready").exists(),
             message="all imported documents to be embedded")
    assert Chunk.objects.filter(document__source="batched").count() == 45


def test_demo_content_loads_once_as_published_public_documents():
    call_command("load_demo_content", stdout=io.StringIO())
    call_command("load_demo_content", stdout=io.StringIO())
    demo = Document.objects.filter(source="demo")
    assert 8 <= demo.count() <= 12
    assert set(demo.values_list("status", "visibility").distinct()) == {("published", "public")}
    assert demo.filter(slug="search-syntax", title="Search syntax and modes").exists()
    assert all(len(d.body) > 500 for d in demo)


def test_slug_collisions_get_a_free_suffix(tmp_path):
    DocumentFactory(slug="guide", source="elsewhere")
    DocumentFactory(slug="guide-2", source="elsewhere")
    notes = write_lines(tmp_path / "notes.jsonl", [
        json.dumps({"id": "a", "title": "Guide", "body": "One.", "slug": "guide"}),
        json.dumps({"id": "b", "title": "Guide", "body": "Two.", "slug": "guide"}),
    ])
    _, err, error = run_import(notes, "--no-embed")
    assert error is None, err
    slugs = dict(Document.objects.filter(source="notes").values_list("external_id", "slug"))
    assert slugs == {"a": "guide-3", "b": "guide-4"}
