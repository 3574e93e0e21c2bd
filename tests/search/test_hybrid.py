"""Semantic side, fusion, filters, facets, passages and the HNSW plan."""

import datetime as dt

import pytest
from django.db import connection

from apps.search.services import (
    PASSAGE_CANDIDATES,
    SearchFilters,
    hybrid_search,
    retrieve_passages,
    similar_documents,
)
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db


def ids(results):
    return [r.document_id for r in results.results]


def test_hybrid_ranks_a_document_matching_both_sides_first():
    both = indexed_document(title="Tidal energy", body="Tidal turbines convert tidal currents into electricity.")
    indexed_document(title="Moon", body="The moon pulls on the oceans and shapes coastlines.")
    indexed_document(title="Wind", body="Wind turbines convert moving air into electricity.")
    found = hybrid_search(query="tidal turbines electricity", user=None)
    assert ids(found)[0] == both.pk
    assert found.results[0].keyword_rank == 1 and found.results[0].semantic_rank == 1


def test_semantic_finds_by_vector_without_keyword_constraints():
    target = indexed_document(title="Volcanoes", body="Magma rises through the crust and erupts as lava.")
    indexed_document(title="Bread", body="Flour, water and yeast make a simple dough.")
    found = hybrid_search(query="lava erupts", user=None, mode="semantic")
    assert ids(found)[0] == target.pk
    assert 0 < found.results[0].score <= 1


def test_tag_and_date_filters_narrow_and_facets_count_the_result_set():
    old = indexed_document(title="Old comet", body="A comet with a long tail.", tags=["comets", "history"],
                           published_at=dt.datetime(2020, 1, 5, tzinfo=dt.UTC))
    new = indexed_document(title="New comet", body="A comet seen last spring.", tags=["comets"],
                           published_at=dt.datetime(2025, 4, 1, tzinfo=dt.UTC))
    indexed_document(title="Asteroid", body="A rocky asteroid, no comet tail at all.", tags=["asteroids"],
                     published_at=dt.datetime(2025, 4, 2, tzinfo=dt.UTC))
    everything = hybrid_search(query="comet", user=None, mode="keyword")
    assert everything.total == 3
    assert dict(everything.facets) == {"comets": 2, "history": 1, "asteroids": 1}
    tagged = hybrid_search(query="comet", user=None, mode="keyword", filters=SearchFilters(tags=["comets"]))
    assert set(ids(tagged)) == {old.pk, new.pk}
    assert dict(tagged.facets) == {"comets": 2, "history": 1}
    both_tags = hybrid_search(query="comet", user=None, filters=SearchFilters(tags=["comets", "history"]))
    assert ids(both_tags) == [old.pk]
    recent = hybrid_search(query="comet", user=None, mode="semantic",
                           filters=SearchFilters(tags=["comets"], date_from=dt.date(2025, 1, 1)))
    assert ids(recent) == [new.pk]
    until = hybrid_search(query="comet", user=None, filters=SearchFilters(date_to=dt.date(2020, 1, 5)))
    assert ids(until) == [old.pk]


def test_filtered_semantic_query_still_returns_k_rows():
    # 5 tagged documents among 150 near-identical ones: the filter removes 97 % of
    # the nearest neighbours, yet the query must still return all 5.
    for i in range(145):
        indexed_document(title=f"Report {i}", body="Quarterly revenue grew in every region.", tags=["finance"])
    tagged = {indexed_document(title=f"Audit {i}", body="Quarterly revenue grew in every region.",
                               tags=["audited"]).pk for i in range(5)}
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # make the planner walk the HNSW index
    found = hybrid_search(query="quarterly revenue", user=None, mode="semantic", limit=5,
                          filters=SearchFilters(tags=["audited"]))
    assert set(ids(found)) == tagged


def test_pagination_walks_the_same_ranking():
    for i in range(12):
        indexed_document(title=f"Lichen {i}", body="Lichen " * (i + 1) + "grows on rocks.")
    first = hybrid_search(query="lichen rocks", user=None, limit=5)
    second = hybrid_search(query="lichen rocks", user=None, limit=5, offset=5)
    whole = hybrid_search(query="lichen rocks", user=None, limit=10)
    assert ids(first) + ids(second) == ids(whole)
    assert first.total == 12


def test_retrieve_passages_returns_chunks_at_most_two_per_document():
    long_body = "\n\n".join(f"## Part {i}\n\n" + ("Glaciers carve valleys slowly. " * 60) for i in range(5))
    big = indexed_document(title="Glaciers", body=long_body)
    other = indexed_document(title="Fjords", body="Fjords are valleys carved by glaciers and flooded by the sea.")
    passages = retrieve_passages(query="glaciers carve valleys", user=None, limit=8)
    per_doc = [p.document_id for p in passages]
    assert per_doc.count(big.pk) == 2 and other.pk in per_doc
    assert all(p.text and p.url == f"/d/{p.slug}/" for p in passages)
    assert passages == sorted(passages, key=lambda p: -p.score)


@pytest.mark.django_db(transaction=True)
def test_aretrieve_passages_takes_an_embedding_started_ahead():
    from apps.llm.testing import run
    from apps.search.services import aembed_query_soon, aretrieve_passages

    indexed_document(title="Glaciers", body="Glaciers carve U-shaped valleys over millennia.")
    indexed_document(title="Tides", body="Tides follow the moon.")
    question = "How do glaciers shape valleys?"

    async def ahead(mode):
        task = aembed_query_soon(question, mode=mode)
        passages = await aretrieve_passages(query=question, user=None, mode=mode, query_vector=task)
        return task, passages

    task, passages = run(ahead, "hybrid")
    assert task.done() and len(task.result()) == 384
    assert [p.chunk_id for p in passages] == [p.chunk_id for p in retrieve_passages(query=question, user=None)]
    assert run(ahead, "keyword")[0] is None  # nothing to embed for keyword mode


def test_hybrid_with_no_query_term_in_the_corpus_ranks_and_scores_as_semantic():
    """No term of the query is in any chunk: the hybrid page shows the semantic ranking with its
    cosine scores (not RRF scores of one list), exactly as mode=semantic does."""
    indexed_document(title="Volcanoes", body="Magma rises through the crust and erupts as lava.")
    indexed_document(title="Bread", body="Flour and water go through a mixer into a simple dough.")
    query = "through into"  # stop words of PostgreSQL's english analyzer, words to the test embedder
    hybrid, semantic = hybrid_search(query=query, user=None), hybrid_search(query=query, user=None, mode="semantic")
    assert hybrid.total == semantic.total == 2
    assert [(r.document_id, r.score, r.keyword_rank, r.semantic_rank) for r in hybrid.results] == [
        (r.document_id, r.score, None, r.semantic_rank) for r in semantic.results]
    assert all(0 < r.score <= 1 for r in hybrid.results)


def test_hybrid_with_a_matching_term_fuses_both_lists_in_one_statement():
    """The query's terms and their idf are computed inside the ranking statement: a page is the
    hnsw settings, the ranking and the page's rows (no round trip reading the terms first)."""
    from django.test.utils import CaptureQueriesContext

    glaciers = indexed_document(title="Glaciers", body="Glaciers carve valleys. Glaciers move slowly downhill.")
    indexed_document(title="Deserts", body="Deserts are dry; wind shapes the dunes.")
    with CaptureQueriesContext(connection) as queries:
        found = hybrid_search(query="the glaciers carving valleys zzyzxunknown", user=None)
    assert found.results[0].document_id == glaciers.pk and found.results[0].keyword_rank == 1
    assert found.results[0].score < 0.1  # an RRF score, not a cosine similarity
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")
                  and not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(statements) == 3, statements
    assert "set_config('hnsw.ef_search'" in statements[0] and "kw_terms" in statements[1]


def test_keyword_mode_with_no_query_term_in_the_corpus_finds_nothing():
    indexed_document(title="Bread", body="Flour, water and yeast make a simple dough.")
    found = hybrid_search(query="zzyzxunknown", user=None, mode="keyword")
    assert (found.total, found.results, found.facets) == (0, [], [])


@pytest.mark.django_db(transaction=True)
def test_passage_retrieval_sets_hnsw_for_its_own_statement_only(settings):
    """ef_search and the filtered scan ride in the same round trip as the query, and end with it."""
    from django.test.utils import CaptureQueriesContext

    settings.SEARCH_PASSAGE_EF_SEARCH = 77
    indexed_document(title="Glaciers", body="Glaciers carve U-shaped valleys over millennia.")
    with CaptureQueriesContext(connection) as queries:
        passages = retrieve_passages(query="glacier valleys", user=None, limit=4)
    assert passages and passages[0].title == "Glaciers"
    main = [q["sql"] for q in queries.captured_queries if "set_config('hnsw.ef_search'" in q["sql"]]
    assert len(main) == 1 and f"'{max(77, PASSAGE_CANDIDATES)}'" in main[0] and "sem_chunks" in main[0]
    assert not any(q["sql"] in ("BEGIN", "COMMIT") for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')")
        assert cursor.fetchone() == ("40", "off")  # pgvector's defaults: nothing leaked to the session


def test_similar_documents_are_nearest_by_vectors():
    seed = indexed_document(title="Honey bees", body="Honey bees pollinate flowers and make honey in hives.")
    close = indexed_document(title="Bumble bees", body="Bumble bees pollinate flowers too, in small nests.")
    indexed_document(title="Steel", body="Steel is an alloy of iron and carbon.")
    similar = similar_documents(document=seed, user=None, limit=5)
    assert similar[0].document_id == close.pk
    assert seed.pk not in [s.document_id for s in similar]


def test_explain_shows_the_hnsw_index_for_the_semantic_query():
    target = indexed_document(title="Otters", body="Otters float on their backs.")
    # A corpus big enough for the planner to prefer the index over sorting every
    # row: 5,000 chunks of one public document with random unit vectors.
    filler = indexed_document(title="Filler", body="x")
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO documents_chunk (document_id, ordinal, text, heading_path, token_count, content_hash,
                                            embedding_model, embedding, search_vector)
               SELECT %s, g + 1, 'filler', '', 1, 'h' || g, 'random',
                      l2_normalize((SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) WHERE g > 0)::vector),
                      to_tsvector('english', 'filler')
               FROM generate_series(1, 5000) g""", [filler.pk])
        cursor.execute("ANALYZE documents_document, documents_chunk, search_document")
    captured = []

    def capture(execute, sql, params, many, context):
        if "sem_chunks" in sql:
            captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        found = hybrid_search(query="otters float", user=None, mode="semantic")
    assert [r.document_id for r in found.results][:2] == [target.pk, filler.pk]
    sql, params = captured[0]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using chunk_embedding_halfvec_hnsw" in plan, plan


def test_embedding_outage_degrades_to_keyword_results_instead_of_failing(client, caplog):
    from prometheus_client import REGISTRY

    from apps.core import degraded
    from apps.llm.embeddings.testing import fail_embeddings

    def counted() -> float:
        return REGISTRY.get_sample_value("quire_search_degraded_total", {"surface": "search"}) or 0.0

    doc = indexed_document(title="Geysers", body="Geysers erupt when groundwater boils.")
    degraded.reset()
    before = counted()
    fail_embeddings(True)
    try:
        found = hybrid_search(query="geysers erupt", user=None)
        assert ids(found) == [doc.pk] and found.degraded
        assert hybrid_search(query="geysers", user=None, mode="semantic").total == 0
        page = client.get("/search", {"q": "geysers"}).content.decode()
        assert "Geysers" in page and "semantic search unavailable" in page
    finally:
        fail_embeddings(False)
    assert counted() == before + 3  # every degraded query counted...
    assert caplog.text.count("search.embedding_unavailable") == 1  # ...and said once a minute, not per query


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["hybrid", "keyword", "semantic"])
def test_passages_are_the_same_on_the_event_loop(mode):
    """aretrieve_passages (the chat page's stream) runs the same statement on the loop's pool."""
    from apps.llm.testing import run
    from apps.search.services import aretrieve_passages

    for i in range(4):
        indexed_document(title=f"Glaciers {i}", body=f"Glaciers carve valleys {'slowly ' * i}in the mountains.")
    indexed_document(title="Tides", body="Tides follow the moon.")
    question = "How do glaciers carve valleys?"
    in_a_thread = retrieve_passages(query=question, user=None, mode=mode)
    assert in_a_thread and in_a_thread == run(aretrieve_passages, query=question, user=None, mode=mode)


@pytest.mark.parametrize(("mode", "stages"), [("hybrid", {"vector", "statement"}), ("keyword", {"statement"})])
def test_passage_retrieval_times_its_stages(mode, stages):
    """quire_search_passages_seconds: the wait for the query vector (none in keyword mode), then the statement."""
    from prometheus_client import REGISTRY

    def counts():
        return {stage: REGISTRY.get_sample_value("quire_search_passages_seconds_count", {"stage": stage}) or 0.0
                for stage in ("vector", "statement")}

    indexed_document(title="Glaciers", body="Glaciers carve U-shaped valleys over millennia.")
    before = counts()
    assert retrieve_passages(query="glacier valleys", user=None, limit=4, mode=mode)
    after = counts()
    assert {stage for stage in after if after[stage] == before[stage] + 1} == stages
    assert all(after[stage] == before[stage] for stage in after.keys() - stages)
