"""Exact-match response cache in Redis.

The key is a hash of (route, model, normalised messages, parameters, passages,
**permission scope**): an answer built from documents one user may see is only
ever served to callers with the same scope. Only complete answers of real
models are stored (never partial, failed or extractive ones).
"""

from __future__ import annotations

import hashlib
import json

from redis.exceptions import RedisError

from apps.core.degraded import redis_unavailable
from apps.core.logging import get_logger
from apps.llm import runtime
from apps.llm.metrics import CACHE

logger = get_logger("quire.llm.cache")


def _normalise_messages(messages: list[dict]) -> list[list]:
    normalised = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = " ".join(content.split())  # whitespace differences do not change the question
        normalised.append([str(message.get("role", "")).lower(), message.get("name"), content])
    return normalised


def cache_key(*, route: str, model: str, messages: list[dict], params: dict, scope: str,
              passages: list[dict] | None) -> str:
    material = json.dumps(
        [route, model, _normalise_messages(messages), params, passages or None, scope],
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return runtime.key("cache", hashlib.sha256(material.encode()).hexdigest())


async def get(key: str, *, route: str) -> dict | None:
    """The cached answer, or None (also when Redis is unavailable: a miss)."""
    try:
        raw = await runtime.aredis().get(key)
    except RedisError as exc:
        redis_unavailable("llm.cache", exc)
        raw = None
    return decode(raw, key=key, route=route)


def decode(raw: bytes | str | None, *, key: str, route: str) -> dict | None:
    """A stored answer from its raw Redis value, counted as hit or miss.

    An entry that is not what :func:`put` stores (another writer, a format from an
    older release, a corrupted value) is a miss, logged, never an error: the caller
    then asks the model and overwrites it.
    """
    value = None
    if raw is not None:
        try:
            value = json.loads(raw)
            prompt, completion, estimated = value["usage"]
            if not (isinstance(value["text"], str) and isinstance(value["provider"], str)
                    and isinstance(value["model"], str) and isinstance(prompt, int)
                    and isinstance(completion, int) and isinstance(estimated, bool)):
                raise TypeError("unexpected field types")
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("llm.cache.malformed_entry", key=key, error=f"{type(exc).__name__}: {exc}")
            value = None
    CACHE.labels(route, "hit" if value is not None else "miss").inc()
    return value


async def put(key: str, value: dict, *, ttl: int) -> None:
    if ttl > 0:
        try:
            await runtime.aredis().set(key, json.dumps(value), ex=ttl)
        except RedisError as exc:
            redis_unavailable("llm.cache", exc)
