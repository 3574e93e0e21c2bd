"""`bench search` end to end on a small collection (the real run uses 100k vectors)."""

import json

import pytest
from django.core.management import call_command
from django.db import connection

from apps.search.benchmarks import EF_CANDIDATES
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db


def test_bench_search_reports_recall_latency_and_filtered_rows(capsys, tmp_path):
    doc = indexed_document(title="Seed", body="seed")
    with connection.cursor() as cursor:  # 1,200 "real" chunk vectors to build from
        cursor.execute(
            """INSERT INTO documents_chunk (document_id, ordinal, text, heading_path, token_count, content_hash,
                                            embedding_model, embedding)
               SELECT %s, g + 1, 'x', '', 1, 'h' || g, 'random',
                      l2_normalize((SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) WHERE g > 0)::vector)
               FROM generate_series(1, 1200) g""", [doc.pk])
        cursor.execute("SELECT count(*) FROM documents_chunk")
        chunks_before = cursor.fetchone()[0]
    call_command("bench", "search", "--chunks", "3000", "--max-queries", "5", "--queries", str(tmp_path),
                 "--compare", "vector", "--drop")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["index"] == "halfvec"  # the production kind by default
    assert result["halfvec_index_mb"] < result["vector_index_mb"]
    assert set(result["vector_curve"]) == set(result["ef_curve"])
    assert result["chunks"] == 3000 and result["queries"] == 5
    assert 0 < result["recall_at_10"] <= 1 and result["ef_search"] in EF_CANDIDATES
    assert {"hnsw_p50_ms", "hnsw_p99_ms", "exact_p50_ms", "speedup_p50"} <= set(result)
    assert result["index_options"] == "m=32,ef_construction=128"  # the index measured, read back from PostgreSQL
    for selectivity in ("1pct", "10pct"):
        entry = result["filtered"][selectivity]
        assert entry["iterative_relaxed_order"]["rows_mean"] >= entry["iterative_off"]["rows_mean"]
    with connection.cursor() as cursor:  # the collection lived in its own table, now dropped
        cursor.execute("SELECT count(*) FROM documents_chunk")
        assert cursor.fetchone()[0] == chunks_before
        cursor.execute("SELECT to_regclass('bench_search_vector')")
        assert cursor.fetchone()[0] is None
