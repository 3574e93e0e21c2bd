"""Query vectors shared by every process through Redis, behind each process's own recent ones.

A search query embedded by one web process is found by the others (a reader's next results
page often lands on another worker) and by a restarted process, for
``EMBEDDING_QUERY_SHARED_CACHE_SECONDS`` (a day by default; 0 turns it off). With the local
model a hit saves about 4-5 ms of CPU per query; with an embedding provider it saves a paid
HTTP call. Chat's questions keep to their process (``aembed_query(shared=False)``, see
apps.search.services).

A vector is stored as its float32 bytes (1.5 KB for 384 dimensions; the models' vectors
are float32, so nothing is lost) under a key naming the model, its dimensions and the
SHA-256 of the query: the query's text is not stored. When Redis is unavailable the query
is embedded as if nothing were shared (counted, and a warning at most once a minute per process:
apps.core.degraded).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from array import array

from django.conf import settings
from redis.exceptions import RedisError

from apps.core.degraded import redis_unavailable

_pending: set[asyncio.Task] = set()  # stores in flight (a task nobody holds may be collected)


def ttl() -> int:
    return max(0, int(settings.EMBEDDING_QUERY_SHARED_CACHE_SECONDS))


def cache_key(*, model_id: str, dimensions: int, text: str) -> str:
    from apps.llm import runtime

    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return runtime.key("query-vector", model_id, dimensions, digest)


def _decode(raw: bytes | None, dimensions: int) -> list[float] | None:
    if not raw or len(raw) != 4 * dimensions:
        return None
    vector = array("f")
    vector.frombytes(raw)
    return vector.tolist()


def _encode(vector: list[float]) -> bytes:
    return array("f", vector).tobytes()


@contextlib.contextmanager
def _without_redis():
    """Redis failing here costs a shared copy, nothing else: counted and carried on."""
    try:
        yield
    except (RedisError, OSError) as exc:
        redis_unavailable("embedding.query_cache", exc)


def get(key: str, dimensions: int) -> list[float] | None:
    from apps.llm import runtime

    with _without_redis():
        return _decode(runtime.sync_redis().get(key), dimensions)
    return None


def put(key: str, vector: list[float]) -> None:
    from apps.llm import runtime

    with _without_redis():
        runtime.sync_redis().set(key, _encode(vector), ex=ttl())


async def aget(key: str, dimensions: int) -> list[float] | None:
    from apps.llm import runtime

    with _without_redis():
        return _decode(await runtime.aredis().get(key), dimensions)
    return None


def aput_soon(key: str, vector: list[float]) -> None:
    """Store ``vector`` from the running loop without making the caller wait for Redis."""
    task = asyncio.ensure_future(_aput(key, _encode(vector), ttl()))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _aput(key: str, raw: bytes, seconds: int) -> None:
    from apps.llm import runtime

    with _without_redis():
        await runtime.aredis().set(key, raw, ex=seconds)
