"""Postings and corpus statistics stay exact under concurrent writers.

Several threads (separate connections, so separate transactions and backends)
replace, insert and delete chunks of different documents that share the same
hot lexemes at the same time. Afterwards the trigger-maintained tables must
equal a from-scratch recomputation, and nobody may have deadlocked.
"""

import threading

import pytest
from django.db import connection, connections, transaction

from apps.documents.services import document_update, embed_document
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db(transaction=True)

HOT = "protein cell expression gene binding " * 5


def _recomputed(cursor):
    cursor.execute("""
        SELECT count(*), coalesce(sum(dl), 0) FROM (
            SELECT c.id, sum(greatest(coalesce(array_length(t.positions, 1), 1), 1)) AS dl
            FROM documents_chunk c, unnest(c.search_vector) t GROUP BY c.id) x""")
    expected_stats = cursor.fetchone()
    cursor.execute("""
        SELECT t.lexeme, count(*) FROM documents_chunk c, unnest(c.search_vector) t GROUP BY t.lexeme
        EXCEPT SELECT lexeme, count(*) FROM search_posting GROUP BY lexeme""")
    missing = cursor.fetchall()
    cursor.execute("""
        SELECT lexeme, count(*) FROM search_posting GROUP BY lexeme
        EXCEPT SELECT t.lexeme, count(*) FROM documents_chunk c, unnest(c.search_vector) t GROUP BY t.lexeme""")
    extra = cursor.fetchall()
    cursor.execute("SELECT coalesce(sum(chunks), 0), coalesce(sum(total_length), 0) FROM search_corpus_stats")
    return expected_stats, cursor.fetchone(), missing, extra


def test_concurrent_writers_keep_postings_and_stats_exact():
    documents = [indexed_document(title=f"Hot {i}", body=f"{HOT} unique{i}") for i in range(12)]
    errors = []

    def writer(batch):
        try:
            for round_ in range(3):
                for doc in batch:
                    doc.refresh_from_db()
                    document_update(document=doc, body=f"{HOT} round{round_} " + "protein " * round_)
                    embed_document(doc.pk)
                with transaction.atomic():
                    batch[-1].chunks.all().delete()
                    embed_document(batch[-1].pk)
        except Exception as exc:  # surfaced below, with the thread's error
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(documents[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    with connection.cursor() as cursor:
        expected_stats, stored_stats, missing, extra = _recomputed(cursor)
    assert stored_stats == expected_stats
    assert missing == [] and extra == []
