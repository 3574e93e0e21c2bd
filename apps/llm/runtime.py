"""Long-lived, per-process resources of the inference layer.

aiohttp sessions and asyncio Redis pools belong to one event loop, so they are
kept per (process, loop): a uvicorn worker has one loop and therefore one
connection pool to each upstream for its whole life, which is what keeps the
proxy's added latency low (see :mod:`apps.core.loops`). Code that runs a short-lived
loop (``async_to_sync``) closes that loop's resources with :func:`aclose_loop_resources`.
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import transaction
from redis.exceptions import RedisError

from apps.core.degraded import REDIS_TIMEOUTS, fail_fast_connection_class
from apps.core.logging import get_logger
from apps.core.loops import aclose_loop_resources, forget_loop_local, loop_local  # noqa: F401 (part of this API)

logger = get_logger("quire.llm.runtime")


def http_session() -> aiohttp.ClientSession:
    """This loop's pooled HTTP client (keep-alive connections to every upstream)."""

    def create() -> aiohttp.ClientSession:
        # Each streamed answer holds one upstream connection for its whole length,
        # so the pool must be as large as the streams one worker serves (bench sse).
        limit = settings.LLM_HTTP_POOL_LIMIT
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300)
        # Timeouts are per request (route settings), never session-wide.
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    session = loop_local("http", create)
    if session.closed:
        forget_loop_local("http")
        session = loop_local("http", create)
    return session


def key(*parts: object) -> str:
    """A Redis key in this deployment's (or test run's) namespace."""
    prefix = settings.CACHES["default"].get("KEY_PREFIX", "quire")
    return ":".join([prefix, "llm", *(str(p) for p in parts)])


# Redis holds breaker state, cache, spend and the ledger queue; when it is down
# every caller degrades (see breaker, cache, budgets, services) instead of failing,
# so it must fail fast: short timeouts, and no new connection for a while after an outage
# (apps.core.degraded).


def aredis() -> aioredis.Redis:
    """This loop's asyncio Redis client (one quick retry, not redis-py's default backoff)."""
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff

    def create() -> aioredis.Redis:
        # A bounded pool that waits briefly for a free connection: redis-py's default
        # pool raises "Too many connections" past 100, which at 2,000 concurrent
        # streams turned cache/breaker/ledger calls into fallbacks (bench sse).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.LLM_REDIS_MAX_CONNECTIONS,
            timeout=REDIS_TIMEOUTS["socket_timeout"], retry=AsyncRetry(NoBackoff(), 1), **REDIS_TIMEOUTS,
            connection_class=fail_fast_connection_class(settings.REDIS_URL, asynchronous=True))
        return aioredis.Redis(connection_pool=pool)

    return loop_local("redis", create)


_sync_redis: dict[str, redis.Redis] = {}


def sync_redis() -> redis.Redis:
    client = _sync_redis.get(settings.REDIS_URL)
    if client is None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = _sync_redis[settings.REDIS_URL] = redis.Redis.from_url(
            settings.REDIS_URL, retry=Retry(NoBackoff(), 1), **REDIS_TIMEOUTS,
            connection_class=fail_fast_connection_class(settings.REDIS_URL))
    return client


def replace_version(redis_key: str) -> None:
    """Store a new random token at ``redis_key`` once the current transaction commits (a
    process that reloads on the new token must read the new rows). Processes that remember
    what they read under the old token read it again: API keys (:mod:`apps.llm.keys`), user
    budgets (:mod:`apps.llm.budgets`). If Redis cannot be reached they notice when what they
    remember expires."""

    def replace() -> None:
        try:
            sync_redis().set(redis_key, uuid.uuid4().hex)
        except RedisError as exc:
            logger.warning("llm.version_bump_failed", key=redis_key, error=str(exc))

    transaction.on_commit(replace)


_SHAS: dict[str, str] = {}


async def run_script(script: str, keys: list[str], args: list) -> Any:
    """EVALSHA a Lua script (one short hash over the wire instead of the script),
    loading it on first use or after a Redis restart."""
    import hashlib

    from redis.exceptions import NoScriptError

    sha = _SHAS.get(script)
    if sha is None:
        sha = _SHAS[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
    client = aredis()
    try:
        return await client.evalsha(sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script, len(keys), *keys, *args)
