"""What a process does without Redis, or without PostgreSQL: counts it, and says so once a minute.

Redis holds what makes Quire fast and fair, not what it answers from: rate-limit counters,
the LLM proxy's cache, breaker and budget state, the ledger's queue, shared query vectors,
the Celery broker. Each place that talks to it catches the outage and carries on in a
documented degraded way (rate limits and budgets admit, the cache misses, ledger rows go
straight to the database, a task that cannot be queued is picked up by the sweep). Each
calls :func:`redis_unavailable`, which

- counts every occurrence in ``quire_redis_unavailable_total{component}`` (alert on its rate);
- logs ``<component>.redis_unavailable`` at most once per ``_WARN_EVERY_S`` per component and
  process, with how many were not logged since (``suppressed``): an outage at a thousand
  requests a second is a few lines a minute, not thousands a second.

A Redis that hangs (a failover, a full network queue, a frozen server) is worse than one that
refuses: every call would wait for its timeout. So an outage (a refused or timed-out connection
or command) marks Redis **down for ``REDIS_DOWN_FOR_S``** in this process (for every Redis it
talks to: cache and broker are usually one server): the clients Quire
makes (:func:`fail_fast_connection_class`: the LLM layer's, Django's cache) refuse to open a
connection meanwhile (:class:`RedisKnownDown`, at once, no network), and a task is not even
offered to the broker. One request per process pays the timeout every ``REDIS_DOWN_FOR_S``,
not every request.

Without PostgreSQL nothing can be answered, but it is said plainly: a request whose view
fails to reach the database (a refused connection, the pool's timeout, a statement cancelled
or a deadlock: Django's ``OperationalError`` / ``InterfaceError``) is a **503** with
``Retry-After`` (the envelope's ``database_unavailable`` on API paths, a short page elsewhere),
not a 500 with a traceback for each request (:func:`apps.core.exceptions.database_unavailable_response`,
from :class:`apps.core.middleware.DatabaseUnavailableMiddleware`, the lean handlers of
apps.llm.asgi and DRF's exception handler). It is counted in
``quire_database_unavailable_total{surface}`` and logged as ``database.unavailable`` once a
minute per process.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import psycopg
import redis
import redis.asyncio
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as KombuOperationalError
from prometheus_client import Counter

from apps.core.logging import get_logger

logger = get_logger("quire.degraded")

REDIS_UNAVAILABLE = Counter("quire_redis_unavailable_total",
                            "Redis calls that failed and were carried on without (by component)", ["component"])
DATABASE_UNAVAILABLE = Counter("quire_database_unavailable_total",
                               "Requests answered 503 because the database could not serve them", ["surface"])
# Django's wrappers (the ORM), and psycopg's own (statements on the event loop's pool, apps.core.adb;
# psycopg_pool.PoolTimeout is an OperationalError).
DATABASE_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
_WARN_EVERY_S = 60.0
REDIS_DOWN_FOR_S = 10.0
# Every Redis client Quire makes: it is an accelerator, so it must fail fast (a command waits at
# most this long; Celery's broker connection has its own, in settings).
REDIS_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 2.0}
# What a socket raises when Redis is out (not a bad command, e.g. a script's error): refused,
# reset, timed out.
REDIS_OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_down_until = [float("-inf")]
_down_cause = [""]
_lock = threading.Lock()
_last: dict[str, float] = {}  # event: when its warning was last logged (monotonic)
_suppressed: dict[str, int] = {}


def redis_unavailable(component: str, exc: BaseException, **fields) -> None:
    """Record that ``component`` went on without Redis after ``exc`` (see the module's doc)."""
    REDIS_UNAVAILABLE.labels(component).inc()
    # redis-py's clients mark Redis down themselves, where a socket failed (the connection classes
    # below), not on a full pool's "No connection available" (a busy process, not an outage).
    # The broker's client is kombu's: its failure to publish marks it here.
    if isinstance(exc, KombuOperationalError):
        mark_redis_down(exc)
    warn_once_a_minute(f"{component}.redis_unavailable", exc, **fields)


class RedisKnownDown(redis.exceptions.ConnectionError):
    """Raised instead of connecting while Redis is marked down (callers treat it as any outage)."""


def redis_known_down() -> bool:
    return time.monotonic() < _down_until[0]


def mark_redis_down(exc: BaseException) -> None:
    _down_until[0] = time.monotonic() + REDIS_DOWN_FOR_S
    _down_cause[0] = f"{type(exc).__name__}: {str(exc)[:200]}"


def _refuse_while_down() -> None:
    if redis_known_down():
        raise RedisKnownDown(f"Redis failed less than {REDIS_DOWN_FOR_S:g} s ago in this process "
                             f"({_down_cause[0]}); not connecting again yet")


class _FailFast:
    """Mixin for redis-py's connection classes (sync): no new connection while Redis is marked
    down, and a failed connect, or a reply that never came, marks it down."""

    # Every way of connecting goes through this (connect(), and a command on a dropped connection).
    def connect_check_health(self, *args, **kwargs):
        if not self.is_connected:
            _refuse_while_down()
        try:
            return super().connect_check_health(*args, **kwargs)
        except REDIS_OUTAGE_ERRORS as exc:
            mark_redis_down(exc)
            raise

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except REDIS_OUTAGE_ERRORS as exc:  # a reply that never came: the client's retry must not wait again
            mark_redis_down(exc)
            raise


class _AsyncFailFast:
    """The same for redis.asyncio's connection classes."""

    async def connect_check_health(self, *args, **kwargs):
        if not self.is_connected:
            _refuse_while_down()
        try:
            return await super().connect_check_health(*args, **kwargs)
        except REDIS_OUTAGE_ERRORS as exc:
            mark_redis_down(exc)
            raise

    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except REDIS_OUTAGE_ERRORS as exc:
            mark_redis_down(exc)
            raise


_FAIL_FAST_CLASSES = {
    (scheme, asynchronous): type(f"FailFast{'Async' if asynchronous else ''}{base.__name__}", (mixin, base), {})
    for asynchronous, mixin, module in ((False, _FailFast, redis), (True, _AsyncFailFast, redis.asyncio))
    for scheme, base in (("redis", module.Connection), ("rediss", module.SSLConnection),
                         ("unix", module.UnixDomainSocketConnection))
}


def fail_fast_connection_class(url: str, *, asynchronous: bool = False) -> type:
    """The connection class for ``url``'s scheme (``redis``, ``rediss``, ``unix``) that refuses to
    connect while Redis is marked down: pass it as ``connection_class`` to a pool."""
    return _FAIL_FAST_CLASSES[(urlsplit(url).scheme or "redis", asynchronous)]


def database_unavailable(surface: str, exc: BaseException, **fields) -> None:
    """Record that a request on ``surface`` (``api``, ``page``, ``gateway``) could not reach the
    database (see the module's doc)."""
    DATABASE_UNAVAILABLE.labels(surface).inc()
    warn_once_a_minute("database.unavailable", exc, surface=surface, **fields)


def warn_once_a_minute(event: str, exc: BaseException, **fields) -> None:
    """Log ``event`` as a warning with ``exc`` unless it was logged less than ``_WARN_EVERY_S``
    ago by this process; the next line says how many were not logged (``suppressed``)."""
    now = time.monotonic()
    with _lock:
        if now - _last.get(event, float("-inf")) < _WARN_EVERY_S:
            _suppressed[event] = _suppressed.get(event, 0) + 1
            return
        _last[event] = now
        suppressed = _suppressed.pop(event, 0)
    logger.warning(event, error=f"{type(exc).__name__}: {str(exc)[:300]}", suppressed=suppressed, **fields)


def reset() -> None:
    """Forget when each warning was logged, and that Redis was down (tests)."""
    with _lock:
        _last.clear()
        _suppressed.clear()
    _down_until[0] = float("-inf")
