"""Prepared statements from async code, on the event loop: :func:`afetch_prepared`.

The async counterpart of :func:`apps.core.db.fetch_prepared`, for the few statements an
async view runs before its first byte (the chat stream: session, user, bookkeeping,
retrieval). Django's ORM runs async queries in a thread (``sync_to_async``): each costs
a hand-off to that thread and back, and the thread and the event loop then take turns on
the GIL. Here the statement goes out on an ``AsyncConnection`` from this loop's own pool
(psycopg_pool, ``DB_ASYNC_POOL``), with server-side binding, prepared on the connection;
``setup`` statements (``SET LOCAL``) go in the same transaction and round trip (pipeline
mode), as in :func:`~apps.core.db.fetch_prepared`.

Errors are raised as Django's (``django.db.OperationalError``, ``IntegrityError``...), so
callers catch the same classes either way.

``DB_ASYNC_POOL = None`` sends the statements through Django's own connection in its
thread instead (``sync_to_async``): what a test inside a transaction needs, as another
connection would not see its rows; nothing else changes. So does a loop that does not keep
resources (:func:`apps.core.loops.keep_resources`: the ASGI server's loop does, see
config/asgi.py): a short-lived loop (``async_to_sync`` under WSGI, in a command) would never
finish closing with a pool's background tasks on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, utils
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg_pool import AsyncConnectionPool

from apps.core.db import database_url, fetch_prepared, release_connection
from apps.core.loops import keeps_resources, loop_local

# The cursor the statements run on; apps.core.tracing puts a traced subclass here when traces are on.
statement_cursor: type[psycopg.AsyncCursor] = psycopg.AsyncCursor

# Django's exception classes by psycopg's, most specific first (DatabaseErrorWrapper's order).
_DJANGO_ERRORS = (utils.DataError, utils.OperationalError, utils.IntegrityError, utils.InternalError,
                  utils.ProgrammingError, utils.NotSupportedError, utils.DatabaseError, utils.InterfaceError,
                  utils.Error)


def _django_error(exc: psycopg.Error) -> utils.Error:
    for django_class in _DJANGO_ERRORS:
        if isinstance(exc, getattr(psycopg, django_class.__name__)):
            error = django_class(*exc.args)
            error.__cause__ = exc
            return error
    return utils.Error(*exc.args)  # pragma: no cover - every psycopg.Error is a psycopg.Error


@functools.cache
def offline_connection() -> BaseDatabaseWrapper:
    """A Django connection object for building statements on the event loop (quoting names,
    adapting values as the ORM does); it never connects. ``django.db.connection`` is per
    context in async code (asgiref's ``Local``): touched on the loop, it makes a new wrapper
    for every request, kept as long as the request's task lives (a chat stream: minutes).
    That was 4 KB per held stream."""
    return connections.create_connection(DEFAULT_DB_ALIAS)


def _create_pool() -> AsyncConnectionPool:
    db = settings.DATABASES["default"]
    options = db.get("OPTIONS") or {}
    config = settings.DB_ASYNC_POOL
    return AsyncConnectionPool(
        conninfo=database_url(db),
        # As Django's connections: autocommit, and statements prepared unless DB_PREPARED_STATEMENTS is False.
        kwargs={"autocommit": True, "prepare_threshold": options.get("prepare_threshold")},
        min_size=config["min_size"], max_size=config["max_size"], timeout=config["timeout"],
        name="quire-async", open=False,
    )


async def pool() -> AsyncConnectionPool:
    """This loop's pool, opened on first use (closed with the loop's other resources)."""
    the_pool = loop_local("db", _create_pool)
    if the_pool.closed:
        await the_pool.open()
    return the_pool


async def _in_one_transaction(conn, cursor, setup: tuple[str, list], sql: str, params: list) -> None:
    """BEGIN, ``setup``, the statement and COMMIT in one round trip (see apps.core.db)."""
    control = psycopg.AsyncCursor(conn)  # BEGIN and COMMIT (the statement's cursor keeps its rows)
    try:
        async with conn.pipeline():
            await control.execute("BEGIN")
            await cursor.execute(*setup)
            await cursor.execute(sql, params, prepare=True)
            await control.execute("COMMIT")
    except psycopg.Error:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.execute("ROLLBACK")  # else the pool would find the failed transaction open
        raise
    # Cancelled (the client went away) with the statement in flight: the pool discards or
    # rolls back the connection when it comes back, as psycopg_pool does with any such one.


def _on_server_loop() -> bool:
    """Whether the running loop is the server's, with its pool (not a test transaction's, not short-lived)."""
    return settings.DB_ASYNC_POOL is not None and keeps_resources()


async def run_sync(func, /, *args, **kwargs):
    """``func(*args, **kwargs)``, blocking code that may use Django's connection, from async code.

    On the server's loop it runs in a pooled thread (the loop's default executor) that is free
    again when it returns, and that thread's connection goes back to Django's pool then: not on
    asgiref's one shared thread, where every caller would wait for the one before, nor on a
    thread kept for the caller's whole request, as Django's regular handler keeps one (its
    ``ThreadSensitiveContext``) until the response ends - for a streamed answer, minutes. It
    runs in a copy of the caller's context (log fields, traces) that is dropped afterwards:
    ``sync_to_async`` would copy the thread's context variables back into the caller's, asgiref's
    locals among them (Django's connection and cache objects are per context in async code): a
    request that then streams for minutes kept them, 24 KB per open API stream (measured).
    Elsewhere (``DB_ASYNC_POOL = None``: tests inside a transaction; a short-lived loop) it runs
    in the caller's thread, as ``sync_to_async`` does, so it sees the caller's transaction.
    """
    if not _on_server_loop():
        return await sync_to_async(func)(*args, **kwargs)

    def call():
        try:
            return func(*args, **kwargs)
        finally:
            release_connection()

    return await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, call)


async def afetch_prepared(sql: str, params: list, *, setup: tuple[str, list] | None = None) -> list[tuple]:
    """The rows of ``sql`` run as a prepared statement, after ``setup`` in the same transaction."""
    if not _on_server_loop():
        return await sync_to_async(fetch_prepared)(sql, params, setup=setup)
    the_pool = await pool()
    try:
        async with the_pool.connection() as conn:
            cursor = statement_cursor(conn)
            try:
                if setup is None:
                    await cursor.execute(sql, params, prepare=True)
                else:
                    await _in_one_transaction(conn, cursor, setup, sql, params)
                return await cursor.fetchall()
            finally:
                await cursor.close()
    except psycopg.Error as exc:
        raise _django_error(exc) from exc
