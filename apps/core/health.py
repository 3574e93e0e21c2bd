"""Readiness checks: PostgreSQL with pgvector, Redis, the Celery broker.

Each check returns ``(ok, detail)``; :func:`run_checks` never raises, so
``/readyz`` answers 503 naming what failed instead of erroring. Apps above
core add their own with :func:`register_check` (core imports none of them).
"""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection


def check_database() -> tuple[bool, dict]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), "
                       "(SELECT extversion FROM pg_extension WHERE extname = 'vector')")
        server_version, vector_version = cursor.fetchone()
    if vector_version is None:
        return False, {"postgres": server_version, "error": "pgvector extension is not installed"}
    return True, {"postgres": server_version, "pgvector": vector_version}


def check_redis() -> tuple[bool, dict]:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
        return True, {"redis": client.info("server").get("redis_version")}
    finally:
        client.close()


def check_broker() -> tuple[bool, dict]:
    from config.celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=1)
        return True, {"transport": conn.transport_cls}


CHECKS = {"database": check_database, "redis": check_redis, "broker": check_broker}


def register_check(name: str, check) -> None:
    """Add ``check`` (a callable returning ``(ok, detail)``) to ``/readyz`` under ``name``."""
    CHECKS[name] = check


def run_checks() -> tuple[bool, dict]:
    results: dict[str, dict] = {}
    healthy = True
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            ok, detail = check()
        except Exception as exc:  # a check must report, never raise
            ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
        detail["ok"] = ok
        detail["ms"] = round((time.perf_counter() - started) * 1000, 2)
        results[name] = detail
        healthy = healthy and ok
    return healthy, results
