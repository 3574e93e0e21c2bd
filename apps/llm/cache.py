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
        logger.warning("llm.cache.redis_unavailable", error=str(exc))
        raw = None
    CACHE.labels(route, "hit" if raw is not None else "miss").inc()
    return json.loads(raw) if raw is not None else None


async def put(key: str, value: dict, *, ttl: int) -> None:
    if ttl > 0:
        try:
            await runtime.aredis().set(key, json.dumps(value), ex=ttl)
        except RedisError as exc:
            logger.warning("llm.cache.redis_unavailable", error=str(exc))
