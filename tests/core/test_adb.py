"""apps.core.adb.afetch_prepared: a prepared statement from async code, on the loop's own pool."""

import psycopg
import pytest
from asgiref.sync import async_to_sync
from django.db import IntegrityError, ProgrammingError, connection

from apps.core import adb
from apps.llm.testing import run

SETUP = ("SELECT set_config('work_mem', %s, true)", ["7MB"])
SQL = "SELECT current_setting('work_mem'), %s::int + 1, pg_backend_pid()"


@pytest.mark.django_db(transaction=True)
def test_statements_run_prepared_on_the_loops_pool_with_their_settings(settings):
    settings.DB_ASYNC_POOL = {"min_size": 1, "max_size": 1, "timeout": 5}  # every statement on one connection

    async def go():
        before = (await adb.afetch_prepared("SELECT current_setting('work_mem')", []))[0][0]
        first = await adb.afetch_prepared(SQL, [41], setup=SETUP)
        again = await adb.afetch_prepared(SQL, [1], setup=SETUP)
        after = (await adb.afetch_prepared("SELECT current_setting('work_mem')", []))[0][0]
        pool = await adb.pool()
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT statement FROM pg_prepared_statements")
            prepared = [row[0] for row in await cursor.fetchall()]
        return before, first, again, after, prepared, pool

    before, first, again, after, prepared, pool = run(go)
    assert first[0][:2] == ("7MB", 42) and again[0][:2] == ("7MB", 2)
    assert after == before  # SET LOCAL ended with the statement's transaction
    # The pool's connection, not Django's: another backend process.
    assert first[0][2] == again[0][2] != connection.cursor().connection.info.backend_pid
    assert any("current_setting('work_mem'), $1::int + 1" in s for s in prepared)
    assert pool.closed  # closed with the loop's other resources


@pytest.mark.django_db(transaction=True)
def test_errors_are_djangos_and_the_pool_stays_usable(settings):
    settings.DB_ASYNC_POOL = {"min_size": 1, "max_size": 1, "timeout": 5}
    connection.cursor().execute("CREATE TABLE t_adb (v int PRIMARY KEY)")
    try:
        async def go():
            with pytest.raises(ProgrammingError):
                await adb.afetch_prepared("SELECT no_such_column FROM t_adb", [])
            await adb.afetch_prepared("INSERT INTO t_adb VALUES (%s) RETURNING v", [1])
            with pytest.raises(IntegrityError):
                await adb.afetch_prepared("INSERT INTO t_adb VALUES (%s) RETURNING v", [1], setup=SETUP)
            async with (await adb.pool()).connection() as conn:  # the one connection: its failed transaction ended
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return await adb.afetch_prepared("SELECT count(*) FROM t_adb", [])

        assert run(go) == [(1,)]
    finally:
        connection.cursor().execute("DROP TABLE t_adb")


@pytest.mark.django_db(transaction=True)
def test_each_loop_has_its_own_pool():
    async def pools():
        return await adb.pool(), await adb.pool()

    (first, same), (second, _) = run(pools), run(pools)
    assert first is same  # one pool per loop, reused
    assert second is not first and first.closed and second.closed


@pytest.mark.django_db
def test_without_a_pool_it_runs_on_djangos_connection_and_sees_its_transaction(settings):
    settings.DB_ASYNC_POOL = None
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE t_adb_tx (v int)")
        cursor.execute("INSERT INTO t_adb_tx VALUES (3)")
    assert run(lambda: adb.afetch_prepared("SELECT v FROM t_adb_tx WHERE v = %s", [3], setup=SETUP)) == [(3,)]


@pytest.mark.django_db(transaction=True)
def test_a_short_lived_loop_gets_no_pool_and_still_finishes():
    """async_to_sync under WSGI or in a command runs a loop of its own and closes it at once:
    a pool's background tasks would keep that loop from ever finishing. Such a loop's
    statements go through Django's connection in a thread."""
    import threading

    results = []

    def wsgi_like():
        try:
            for i in range(8):  # a pool left on such a loop hung its shutdown within a few calls
                results.append(async_to_sync(adb.afetch_prepared)("SELECT %s::int + 1", [i]))
        finally:
            connection.close()  # this thread's, as a WSGI request's end closes it

    worker = threading.Thread(target=wsgi_like, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and results == [[(i + 1,)] for i in range(8)]


@pytest.mark.django_db(transaction=True)
def test_run_sync_uses_a_pooled_thread_and_brings_nothing_back_into_the_callers_context():
    """On the server's loop, blocking Django code runs in a pooled thread, not the caller's, and
    what it set there (asgiref's locals: Django's connection object is per context in async
    code) is not copied back into the caller's context, which a streamed answer keeps for
    minutes (sync_to_async copies it back: 24 KB more per open API stream, measured)."""
    import contextvars
    import threading

    def blocking():
        with connection.cursor() as cursor:  # Django's connection, in that thread
            cursor.execute("SELECT 1")
        return threading.current_thread().name

    async def go():
        before = dict(contextvars.copy_context())
        thread = await adb.run_sync(blocking)
        after = dict(contextvars.copy_context())
        return thread, [var.name for var, value in after.items() if before.get(var, object()) is not value]

    thread, changed = run(go)
    assert thread != threading.current_thread().name
    assert changed == []
