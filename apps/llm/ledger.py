"""Writing the ledger without slowing calls down, and without losing rows.

How a ``UsageRecord`` gets written:

1. When a call ends, its row (a JSON dict, primary key already assigned) is
   ``RPUSH``-ed to a Redis list, in the same round trip that settles the
   caller's budget. That is the only ledger work on the call's path, and once
   it is done the row survives a crash of this process.
2. A background task on each event loop (every ``LLM_LEDGER_FLUSH_INTERVAL``
   seconds) and ``services.complete`` (sync callers) run :func:`flush`: an
   atomic Lua script moves up to 500 rows from the list to a *claim*, the rows
   are inserted in one statement (PostgreSQL parses the JSON), then the claim is deleted. A claim whose process died
   before deleting it is put back after ``CLAIM_TIMEOUT`` seconds; inserting a
   row twice is harmless (``ON CONFLICT (id) DO NOTHING`` on the UUID primary key). So rows
   are written at least once and stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from decimal import ROUND_HALF_UP, Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction

from apps.core.logging import get_logger
from apps.llm import runtime
from apps.llm.conf import price
from apps.llm.metrics import LEDGER_FLUSHED

logger = get_logger("quire.llm.ledger")
CENT_PRECISION = Decimal("0.00000001")
BATCH = 500
CLAIM_TIMEOUT = 60

_CLAIM = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items == 0 then return {} end
redis.call('LTRIM', KEYS[1], #items, -1)
local id = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[2], id, cjson.encode(items))
redis.call('ZADD', KEYS[3], redis.call('TIME')[1], id)
return {id, cjson.encode(items)}
"""
_RECLAIM = """
local cutoff = tonumber(redis.call('TIME')[1]) - tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff)
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    for _, item in ipairs(cjson.decode(raw)) do redis.call('RPUSH', KEYS[1], item) end
  end
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return #ids
"""


def _keys() -> list[str]:
    return [runtime.key("ledger", "pending"), runtime.key("ledger", "claims"),
            runtime.key("ledger", "claim_times"), runtime.key("ledger", "seq")]


def call_cost(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """USD cost from ``LLM_PRICES`` (per 1M tokens), to 1e-8 USD; 0 for unpriced models."""
    prices = price(model)
    if prices is None:
        return Decimal("0")
    cost = (prices[0] * prompt_tokens + prices[1] * completion_tokens) / Decimal(1_000_000)
    return cost.quantize(CENT_PRECISION, rounding=ROUND_HALF_UP)


def push_command(pipe, entry: dict) -> None:
    """Queue the row on a Redis pipeline (async or sync)."""
    pipe.rpush(_keys()[0], json.dumps(entry, default=str))


async def ensure_flusher() -> None:
    """Start this loop's background flusher once (unless flushing is off, as in tests)."""
    interval = settings.LLM_LEDGER_FLUSH_INTERVAL
    if interval:
        # A fresh context: the flusher outlives the request that started it (its
        # request id, its asgiref thread-sensitive executor).
        runtime.loop_local("ledger-flusher", lambda: asyncio.get_running_loop().create_task(
            _flush_forever(interval), context=contextvars.Context()))


async def _flush_forever(interval: float) -> None:
    pending = _keys()[0]
    while True:
        await asyncio.sleep(interval)
        try:
            if await runtime.aredis().llen(pending):
                await sync_to_async(flush)()
        except asyncio.CancelledError:
            raise
        except Exception:  # the rows stay in Redis; the next round tries again
            logger.exception("llm.ledger.flush_failed")


def pending_count() -> int:
    return runtime.sync_redis().llen(_keys()[0])


def flush(*, reclaim_after: int = CLAIM_TIMEOUT) -> int:
    """Move every queued row into the database; returns how many were written."""
    client = runtime.sync_redis()
    keys = _keys()
    client.eval(_RECLAIM, 4, *keys, reclaim_after)
    written = 0
    while True:
        claimed = client.eval(_CLAIM, 4, *keys, BATCH)
        if not claimed:
            break
        claim_id, raw = claimed
        items = json.loads(raw)  # the claimed JSON strings, as queued
        _write(items)
        pipe = client.pipeline(transaction=True)
        pipe.hdel(keys[1], claim_id)
        pipe.zrem(keys[2], claim_id)
        pipe.execute()
        written += len(items)
    if written:
        LEDGER_FLUSHED.inc(written)
    return written


# The batch goes to PostgreSQL as the JSON strings it was queued as, and the
# database parses it: no model instances on the web process (its event loop
# shares the GIL with this). A user or key deleted since the call leaves the
# row with no link instead of failing the batch.
_INSERT = """
INSERT INTO {table} (id, created_at, route, user_id, api_key_id, provider, model, prompt_tokens,
                     completion_tokens, tokens_estimated, cost_usd, latency_ms, ttft_ms, cache_hit, streamed,
                     outcome, error, fallbacks, anonymous)
SELECT r.id, r.created_at, left(r.route, 50), u.{user_pk}, k.id, left(r.provider, 50), left(r.model, 100),
       r.prompt_tokens, r.completion_tokens, r.tokens_estimated, r.cost_usd, r.latency_ms, r.ttft_ms,
       r.cache_hit, r.streamed, left(r.outcome, 10), coalesce(r.error, ''), coalesce(r.fallbacks, 0),
       coalesce(r.anonymous, false)
FROM jsonb_to_recordset(%s::jsonb) AS r(
    id uuid, created_at timestamptz, route text, user_id bigint, api_key_id bigint, provider text, model text,
    prompt_tokens integer, completion_tokens integer, tokens_estimated boolean, cost_usd numeric,
    latency_ms double precision, ttft_ms double precision, cache_hit boolean, streamed boolean, outcome text,
    error text, fallbacks integer, anonymous boolean)
LEFT JOIN {user_table} u ON u.{user_pk} = r.user_id
LEFT JOIN {key_table} k ON k.id = r.api_key_id
ON CONFLICT (id) DO NOTHING
"""


def _write(items: list[str]) -> None:
    """Insert queued rows (JSON strings); rows already stored are skipped."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from apps.llm.models import ApiKey, UsageRecord

    user_meta = get_user_model()._meta
    sql = _INSERT.format(table=UsageRecord._meta.db_table, user_table=user_meta.db_table,
                         user_pk=user_meta.pk.column, key_table=ApiKey._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, ["[" + ",".join(items) + "]"])


def write_now(entries: list[dict]) -> None:
    """Write rows directly (when the Redis queue is unavailable)."""
    _write([json.dumps(entry, default=str) for entry in entries])
