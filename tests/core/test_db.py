"""apps.core.db.fetch_prepared: a prepared statement, with its SET LOCAL settings, in one round trip."""

import psycopg
import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext

from apps.core.db import fetch_prepared

SETUP = ("SELECT set_config('work_mem', %s, true)", ["7MB"])
SQL = "SELECT current_setting('work_mem'), %s::int + 1"


def _prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_the_statement_is_prepared_and_its_settings_end_with_it():
    before = fetch_prepared("SELECT current_setting('work_mem')", [])[0][0]
    assert fetch_prepared(SQL, [41], setup=SETUP) == [("7MB", 42)]
    assert fetch_prepared(SQL, [1], setup=SETUP) == [("7MB", 2)]
    assert fetch_prepared("SELECT current_setting('work_mem')", [])[0][0] == before  # SET LOCAL ended
    assert any("current_setting('work_mem'), $1::int + 1" in s for s in _prepared_statements())


@pytest.mark.django_db(transaction=True)
def test_without_prepared_statements_nothing_stays_on_the_connection():
    """DB_PREPARED_STATEMENTS=False leaves OPTIONS without prepare_threshold: Django's None."""
    connection.ensure_connection()
    raw = connection.connection
    # Before prepared statements are switched off: psycopg then forgets the ones it made here too
    # (with them off it would not, and a later test reusing this pooled connection would run a
    # statement psycopg believes prepared and the server no longer has).
    raw.execute("DEALLOCATE ALL")
    threshold, raw.prepare_threshold = raw.prepare_threshold, None
    try:
        assert fetch_prepared(SQL, [1], setup=SETUP) == [("7MB", 2)]
        assert _prepared_statements() == []
    finally:
        raw.prepare_threshold = threshold


@pytest.mark.django_db(transaction=True)
def test_a_failing_statement_raises_a_django_error_and_leaves_the_connection_usable():
    with pytest.raises(DatabaseError):
        fetch_prepared("SELECT 1 / %s::int", [0], setup=SETUP)
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # rolled back
    assert fetch_prepared("SELECT %s::int", [5]) == [(5,)]
    assert not connection.needs_rollback


@pytest.mark.django_db
def test_inside_a_transaction_it_sees_that_transactions_rows():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE t_db (v int)")
        cursor.execute("INSERT INTO t_db VALUES (3)")
    assert fetch_prepared("SELECT v FROM t_db WHERE v = %s", [3], setup=SETUP) == [(3,)]


@pytest.mark.django_db
def test_each_round_trip_is_logged_with_its_values_like_a_django_query():
    with CaptureQueriesContext(connection) as queries:
        fetch_prepared(SQL, [41], setup=SETUP)
    assert len(queries) == 1
    assert queries[0]["sql"] == ("SELECT set_config('work_mem', '7MB', true); "
                                 "SELECT current_setting('work_mem'), 41::int + 1")
