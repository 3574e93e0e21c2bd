"""The nearest-neighbour query is served by the HNSW (cosine, half-precision) index."""

import pytest
from django.db import connection, transaction

from apps.documents.models import HNSW_INDEX_EXPRESSION
from apps.documents.services import embed_document
from apps.llm.embeddings import get_embedding_backend
from tests.factories.documents import DocumentFactory

pytestmark = pytest.mark.django_db


def test_explain_of_a_nearest_neighbour_query_uses_the_hnsw_index():
    for i in range(30):
        embed_document(DocumentFactory(body=f"Passage {i} about vector search. " * 5).pk)
    query = get_embedding_backend().embed_query("vector search")
    literal = "[" + ",".join(map(str, query)) + "]"
    with transaction.atomic(), connection.cursor() as cursor:
        # With a few dozen rows the planner rightly prefers a sequential scan; turning
        # that off shows whether the index *can* serve the query, which is the point.
        cursor.execute("SET LOCAL enable_seqscan = off")
        query_sql = f"SELECT id FROM documents_chunk ORDER BY {HNSW_INDEX_EXPRESSION} <=> %s::halfvec(384) LIMIT "
        cursor.execute("EXPLAIN " + query_sql + "10", [literal])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(query_sql + "3", [literal])
        assert len(cursor.fetchall()) == 3
    assert "Index Scan using chunk_embedding_halfvec_hnsw" in plan, plan


def test_the_index_is_hnsw_with_cosine_ops_and_stated_parameters():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'documents_chunk' "
                       "AND indexdef LIKE '%USING hnsw%'")
        indexes = cursor.fetchall()
    assert [name for name, _ in indexes] == ["chunk_embedding_halfvec_hnsw"]  # the old full-precision one is gone
    definition = indexes[0][1]
    assert "USING hnsw (((embedding)::halfvec(384)) halfvec_cosine_ops)" in definition
    assert "m='32'" in definition and "ef_construction='128'" in definition
