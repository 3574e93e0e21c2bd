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


@pytest.mark.django_db(transaction=True)
def test_a_vector_parameter_goes_as_binary_and_arrives_as_float4_values():
    from array import array

    from apps.core.db import BinaryVector

    values = [0.1, -0.25, 1 / 3, 2.5e-8, -7.0]
    param = BinaryVector(values)
    with CaptureQueriesContext(connection) as queries:
        rows = fetch_prepared("SELECT %s::vector::text, %s::vector::halfvec(5)::text, vector_dims(%s::vector)",
                              [param, param, param])
    expected = list(array("f", values))  # float4, as a vector column stores them
    as_vector, as_halfvec, dims = rows[0]
    assert [float(x) for x in as_vector.strip("[]").split(",")] == pytest.approx(expected, rel=1e-6)
    assert [float(x) for x in as_halfvec.strip("[]").split(",")] == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert dims == 5
    assert param.packed is not None and len(param.packed) == 4 + 4 * 5  # packed once, header + float4s
    assert "'[0.10000000149011612,-0.25," in queries[0]["sql"]  # the logged copy: its text form


@pytest.mark.django_db
def test_every_django_connection_can_send_a_vector_whenever_it_was_opened():
    """Django copies psycopg's adapters when its first connection opens, which may be before
    apps.core.db registered the vector dumpers: each new connection gets them itself."""
    from types import SimpleNamespace

    from psycopg.adapt import AdaptersMap, PyFormat

    from apps.core.db import BinaryVector, _BinaryVectorDumper, on_connection_created

    connection.ensure_connection()
    assert connection.connection.adapters.get_dumper(BinaryVector, PyFormat.AUTO) is _BinaryVectorDumper
    opened_early = AdaptersMap()  # a map made before the registration
    on_connection_created(None, SimpleNamespace(vendor="postgresql", connection=SimpleNamespace(adapters=opened_early)))
    assert opened_early.get_dumper(BinaryVector, PyFormat.AUTO) is _BinaryVectorDumper


@pytest.mark.django_db
def test_the_suite_runs_on_its_own_database_pool_included():
    """The guard of tests/conftest.py: had the pool been made for the development database while
    the test database was created, every test would run there, and flush it."""
    from django.conf import settings

    from tests.conftest import connected_database

    name = connection.settings_dict["NAME"]
    assert name == settings.DATABASES["default"]["TEST"]["NAME"] and name.startswith("test_")
    assert connected_database() == name
    assert connection.pool.kwargs["dbname"] == name


def test_a_server_whose_postgres_database_does_not_answer_stops_the_suite_before_it_starts():
    from tests.conftest import free_port, maintenance_database_error

    nobody = {"ENGINE": "django.db.backends.postgresql", "NAME": "quire", "USER": "postgres",
              "HOST": "127.0.0.1", "PORT": str(free_port())}
    error = maintenance_database_error(nobody, wait_s=0)
    assert error is not None and "OperationalError" in error and "refused" in error
    assert maintenance_database_error(connection.settings_dict, wait_s=0) is None  # the real server answers
