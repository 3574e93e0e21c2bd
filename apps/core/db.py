"""A prepared statement in one round trip, for the few statements on a latency-critical path.

Django's PostgreSQL backend binds parameters on the client: every statement
travels as one string (a chat question's retrieval carries its 384-dimension
query vector twice as text) that the server parses, analyses and plans anew.
For a small corpus that costs more than running the statement. Here the
statement is sent with server-side binding and prepared on the connection
(psycopg keeps up to ``prepared_max`` per connection; pooled connections keep
theirs), and, when it needs ``SET LOCAL`` settings first, BEGIN, the settings,
the statement and COMMIT go out together in pipeline mode: one round trip (not
psycopg's ``transaction()`` block, which syncs the pipeline on entry and exit).

It runs on Django's own connection (same pool, same transaction when inside
``atomic``) with Django's error wrapping. Not through its cursor wrapper: it is
logged to ``connection.queries`` (``DEBUG``, ``CaptureQueriesContext``) as
Django's debug cursor would log it, one entry per round trip, but
``execute_wrapper`` hooks do not see it.

Behind PgBouncer in transaction mode prepared statements need PgBouncer 1.21+
(``max_prepared_statements``); set ``DB_PREPARED_STATEMENTS=False`` otherwise
(the connection's ``prepare_threshold`` is then None and nothing is prepared).
"""

from __future__ import annotations

import struct
import sys
import time
from array import array
from urllib.parse import quote

import psycopg
from django.db import connection

# The cursor these statements run on: server-side binding. apps.core.tracing puts a traced
# subclass here when traces are on (the ORM's cursors are traced through the connection's
# cursor factory, which this path does not use).
statement_cursor: type[psycopg.Cursor] = psycopg.Cursor


class BinaryVector:
    """A pgvector ``vector`` parameter for the statements here (server-side binding), sent in
    the type's binary format: 384 numbers are not formatted as text by us nor parsed back by
    PostgreSQL (measured: 74.5 µs to format, 11 µs to pack; a round trip binding two copies
    84-89 µs instead of 108-116 µs). Its placeholder must say the type: ``%s::vector``."""

    __slots__ = ("values", "packed")

    def __init__(self, values):
        self.values = values
        self.packed: bytes | None = None  # a statement binding it twice packs it once


_VECTOR_HEADER = struct.Struct(">HH")  # dimensions, unused (pgvector's vector_recv)


class _BinaryVectorDumper(psycopg.adapt.Dumper):
    format = psycopg.pq.Format.BINARY  # oid 0: the server takes the type from the placeholder's cast

    def dump(self, obj: BinaryVector) -> bytes:
        if obj.packed is None:
            values = array("f", obj.values)  # float4, as the column stores them
            if sys.byteorder == "little":
                values.byteswap()  # network order
            obj.packed = _VECTOR_HEADER.pack(len(values), 0) + values.tobytes()
        return obj.packed


class _TextVectorDumper(psycopg.adapt.Dumper):
    """The text form, for a statement's logged copy (``connection.queries``, mogrified)."""

    def dump(self, obj: BinaryVector) -> bytes:
        return ("[" + ",".join(repr(float(x)) for x in array("f", obj.values)) + "]").encode()


def register_vector_dumpers(adapters: psycopg.adapt.AdaptersMap) -> None:
    """Teach ``adapters`` to send :class:`BinaryVector` (the last registered is the one a plain
    ``%s`` uses; the text one is for a logged, mogrified copy)."""
    adapters.register_dumper(BinaryVector, _TextVectorDumper)
    adapters.register_dumper(BinaryVector, _BinaryVectorDumper)


def on_connection_created(sender, connection, **kwargs) -> None:
    """Django's connections copy psycopg's adapters once, when the first one opens (possibly
    before this module was imported): each gets the vector dumpers itself (apps.core.apps)."""
    if connection.vendor == "postgresql":
        register_vector_dumpers(connection.connection.adapters)


register_vector_dumpers(psycopg.adapters)  # every psycopg connection opened from now on (the async pool's)


def release_connection() -> None:
    """Hand this thread's database connection back to the pool now.

    Django would close it only at ``request_finished``: for a streamed answer, when the stream
    ends, so a thousand open streams would hold a thousand connections (the pool has
    ``DB_POOL_MAX_SIZE``), and a thread that may not run again for a while would hold one.
    Inside an atomic block (tests) there is nothing to do.
    """
    if not connection.in_atomic_block:
        connection.close()


def fetch_prepared(sql: str, params: list, *, setup: tuple[str, list] | None = None) -> list[tuple]:
    """The rows of ``sql`` run as a prepared statement, after ``setup`` (a statement and its
    params, e.g. ``set_config(..., true)``) in the same transaction."""
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    raw = connection.connection
    started = time.monotonic()
    try:
        with connection.wrap_database_errors, statement_cursor(raw) as cursor:
            if setup is None:
                cursor.execute(sql, params, prepare=True)
                return cursor.fetchall()
            if connection.in_atomic_block:  # Django's transaction: the settings last until it ends
                with raw.pipeline():
                    cursor.execute(*setup)
                    cursor.execute(sql, params, prepare=True)
                return cursor.fetchall()
            try:
                with raw.pipeline(), psycopg.Cursor(raw) as control:
                    # BEGIN and COMMIT go out as statements of the pipeline: one round trip.
                    # psycopg's transaction() block syncs the pipeline when it opens and when it
                    # closes: three round trips (0.26 ms instead of 0.09 ms in a loop, hot).
                    control.execute("BEGIN")
                    cursor.execute(*setup)
                    cursor.execute(sql, params, prepare=True)
                    control.execute("COMMIT")
            except BaseException:
                if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    raw.execute("ROLLBACK")  # the failed transaction would stay open on the connection
                raise
            return cursor.fetchall()
    finally:
        if connection.queries_logged:
            _log(raw, [*([setup] if setup is not None else []), (sql, params)], time.monotonic() - started)


def _log(raw, statements: list[tuple[str, list]], seconds: float) -> None:
    """One ``connection.queries`` entry for the round trip, its values in place as Django logs them."""
    with psycopg.ClientCursor(raw) as cursor:
        sent = "; ".join(cursor.mogrify(sql, params) for sql, params in statements)
    connection.queries_log.append({"sql": sent, "time": f"{seconds:.3f}"})


def database_url(db: dict) -> str:
    """``DATABASE_URL`` for a Django database settings dict: how a child process (a test's
    server, a benchmark's worker) is pointed at the database this process uses."""
    raw_host = db.get("HOST") or (db.get("OPTIONS") or {}).get("host") or ""  # a "?host=" URL puts it in OPTIONS
    host = quote(raw_host, safe="")
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    if raw_host.startswith("/"):
        # django-environ does not unquote a %2F-encoded socket path in the netloc;
        # it does pass ?host= through to psycopg.
        return f"postgres://{auth}@/{db['NAME']}?host={quote(raw_host, safe='/')}"
    return f"postgres://{auth}@{host}{port}/{db['NAME']}"
