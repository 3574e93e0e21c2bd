"""Keyword side: BM25 over trigger-maintained postings."""

import math

import pytest
from django.db import connection

from apps.search.services import hybrid_search, retrieve_passages
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db


def titles(results):
    return [r.title for r in results.results]


def test_rare_exact_word_finds_its_document():
    indexed_document(title="Soil notes", body="Loam drains well and holds nutrients for the roots.")
    target = indexed_document(title="Glacier notes", body="The moraine left by the glacier contains xenolith fragments.")
    results = hybrid_search(query="xenolith", user=None, mode="keyword")
    assert titles(results) == [target.title]
    assert "<mark>xenolith</mark>" in results.results[0].snippet


def test_long_question_partly_matching_still_finds_the_document():
    target = indexed_document(title="Mitochondria", body="Mitochondria produce most of the cell's supply of ATP.")
    indexed_document(title="Rivers", body="Rivers carry sediment from mountains to the sea.")
    results = hybrid_search(
        query="which tiny organelle inside a eukaryotic cell is responsible for producing ATP energy molecules?",
        user=None, mode="keyword",
    )
    assert titles(results)[0] == target.title


def test_rare_term_outranks_common_term():
    # "protein" is everywhere, "zinc" only in one document: a query with both must
    # rank the zinc document first even though the others say "protein" more often.
    for i in range(6):
        indexed_document(title=f"Protein study {i}", body="Protein folding protein structure protein stability.")
    zinc = indexed_document(title="Trace metals", body="Zinc binds to a protein domain.")
    results = hybrid_search(query="protein zinc", user=None, mode="keyword")
    assert titles(results)[0] == zinc.title
    assert results.total == 7


def test_phrases_and_exclusions_keep_websearch_meaning():
    a = indexed_document(title="Alpha", body="The red fox jumps over the lazy dog.")
    b = indexed_document(title="Beta", body="A fox that is red, and a dog that is lazy.")
    assert titles(hybrid_search(query='"red fox"', user=None, mode="keyword")) == [a.title]
    assert titles(hybrid_search(query="fox -jumps", user=None, mode="keyword")) == [b.title]
    assert titles(hybrid_search(query='fox -"red fox"', user=None, mode="keyword")) == [b.title]


def test_postings_follow_chunk_inserts_updates_and_deletes():
    doc = indexed_document(title="Basalt", body="Basalt is a volcanic rock.")
    assert titles(hybrid_search(query="basalt", user=None, mode="keyword")) == ["Basalt"]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE documents_chunk SET search_vector = to_tsvector('english', 'granite') "
                       "WHERE document_id = %s", [doc.pk])
    assert hybrid_search(query="basalt", user=None, mode="keyword").total == 0
    assert hybrid_search(query="granite", user=None, mode="keyword").total == 1
    doc.delete()  # cascades to chunks
    assert hybrid_search(query="granite", user=None, mode="keyword").total == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM search_posting")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT coalesce(sum(chunks), 0), coalesce(sum(total_length), 0) FROM search_corpus_stats")
        assert cursor.fetchone() == (0, 0)


@pytest.mark.parametrize("query", [
    "'", '"', '""', "-", "--", "!", "&|!():*", "a & b | !c", "foo:*", "'; DROP TABLE documents_chunk; --",
    "\x00null\x00byte", "(((", "<->", "\\", "%s %(x)s", "OR OR OR", "-\"unterminated", "x" * 5000,
    " ".join(f"word{i}" for i in range(900)), "日本語の検索", "🙂🙂", "AND NOT or",
])
@pytest.mark.parametrize("mode", ["keyword", "hybrid", "semantic"])
def test_nothing_a_user_types_breaks_the_query(query, mode):
    indexed_document(title="Anything", body="Some words to search for.")
    results = hybrid_search(query=query, user=None, mode=mode)
    assert results.total >= 0


@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.2, 0.75), (2.0, 0.0)])
def test_scores_are_bm25_of_the_postings(settings, k1, b):
    """The statement's BM25 (rewritten into per-statement factors, in float8) is the textbook
    formula over the postings' tf and dl, df counted per lexeme, N and avgdl from the stats."""
    settings.SEARCH_BM25_K1, settings.SEARCH_BM25_B = k1, b
    for i in range(4):
        indexed_document(title=f"Protein study {i}", body="Protein folding. " * (i + 1) + "Membrane proteins fold.")
    indexed_document(title="Trace metals", body="Zinc binds to a protein domain in the membrane.")
    indexed_document(title="Rivers", body="Rivers carry sediment from mountains to the sea.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT sum(chunks)::float8, sum(total_length)::float8 FROM search_corpus_stats")
        n, total_length = cursor.fetchone()
        cursor.execute("SELECT lexeme, chunk_id, tf, dl FROM search_posting "
                       "WHERE lexeme IN (SELECT lexeme FROM unnest(to_tsvector('english', 'zinc protein membrane')))")
        postings = cursor.fetchall()
    avgdl = total_length / n
    df = {lexeme: sum(1 for p in postings if p[0] == lexeme) for lexeme, *_ in postings}
    expected = {}
    for lexeme, chunk_id, tf, dl in postings:
        idf = math.log(1 + (n - df[lexeme] + 0.5) / (df[lexeme] + 0.5))
        expected[chunk_id] = expected.get(chunk_id, 0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
    assert len(df) == 3 and len(expected) == 5

    passages = retrieve_passages(query="zinc protein membrane", user=None, mode="keyword", limit=10)
    assert {p.chunk_id: p.score for p in passages} == pytest.approx(expected, rel=1e-12)
    assert passages[0].title == "Trace metals"
    page = hybrid_search(query="zinc protein membrane", user=None, mode="keyword")
    assert {r.chunk_id: r.score for r in page.results} == pytest.approx(expected, rel=1e-12)
