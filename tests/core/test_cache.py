"""Django's cache under ASGI: a cache object per request context, one Redis client per process."""

import asyncio
import contextvars

from django.core.cache import caches


def _in_a_new_context(func):
    """As an ASGI request runs: in a context of its own (asgiref's Local is per context)."""

    async def go():
        return await asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run, func)

    return asyncio.run(go())


def test_every_request_context_shares_one_redis_connection_pool():
    def throttle_like():
        cache = caches["default"]
        history = cache.get("test-cache-shared", [])
        cache.set("test-cache-shared", [*history, 1][-5:], 60)
        return cache, cache._cache

    def connections(pool) -> int:
        return len(pool._available_connections) + len(pool._in_use_connections)

    pool = _in_a_new_context(throttle_like)[1]._get_connection_pool(write=True)
    before = connections(pool)
    results = [_in_a_new_context(throttle_like) for _ in range(20)]
    caches_seen = {id(cache) for cache, _ in results}
    clients = {id(client) for _, client in results}
    assert len(caches_seen) > 1  # Django's: a cache object per context...
    assert len(clients) == 1  # ...and ours: one client, so one pool and its connections, for all of them
    assert connections(pool) <= before + 1  # sequential requests: no new connection each
