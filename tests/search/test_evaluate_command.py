"""evaluate_search on a tiny BEIR folder: loads an isolated source, embeds it,
scores every query through hybrid_search, prints JSON last, resumes, drops."""

import json
from io import StringIO

import pytest
from django.core.management import call_command

from apps.documents.models import Document
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db

CORPUS = [
    {"_id": "d1", "title": "Penguin diving", "text": "Emperor penguins dive deeper than any other bird."},
    {"_id": "d2", "title": "Cactus water", "text": "Cacti store water in thick stems to survive drought."},
    {"_id": "d3", "title": "Volcanic soil", "text": "Volcanic ash makes soil rich in minerals."},
]
QUERIES = [{"_id": "q1", "text": "how deep do penguins dive"}, {"_id": "q2", "text": "cactus drought water"},
           {"_id": "q3", "text": "not in the test split"}]


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "tinybeir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in CORPUS))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in QUERIES))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return folder


def run(*args) -> tuple[str, dict]:
    out = StringIO()
    call_command("evaluate_search", *args, stdout=out, stderr=StringIO())
    text = out.getvalue()
    return text, json.loads(text.strip().splitlines()[-1])


def test_evaluate_search_scores_every_mode_and_keeps_the_corpus_isolated(beir):
    other = indexed_document(title="Penguin diving deeper", body="Penguins dive deep, deeper than any bird.")
    text, figures = run(str(beir), "--mode", "all")
    assert set(figures) == {"hybrid", "semantic", "keyword"}
    for mode in figures.values():
        assert set(mode) == {"ndcg_at_10", "recall_at_100", "mrr_at_10", "p50_ms", "p95_ms", "queries"}
        assert mode["queries"] == 2 and mode["ndcg_at_10"] == 1.0 and mode["recall_at_100"] == 1.0
    assert "nDCG@10" in text  # the table precedes the JSON
    loaded = Document.objects.filter(source="beir:tinybeir")
    assert loaded.count() == 3 and not loaded.exclude(embedding_status="ready").exists()
    assert Document.objects.filter(pk=other.pk).exists()  # real content untouched, never ranked

    again, _ = run(str(beir), "--mode", "keyword")
    assert "0 documents added" in again  # resumable: nothing reloaded or re-embedded
    dropped = StringIO()
    call_command("evaluate_search", str(beir), "--drop", stdout=dropped)
    assert "Dropped beir:tinybeir" in dropped.getvalue()
    assert not Document.objects.filter(source="beir:tinybeir").exists()
    assert Document.objects.filter(pk=other.pk).exists()


def test_evaluate_search_rejects_a_folder_that_is_not_beir(tmp_path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a BEIR folder"):
        call_command("evaluate_search", str(tmp_path), stdout=StringIO())
