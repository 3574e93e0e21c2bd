"""A circuit breaker per provider, its state in Redis so that every web and
worker process shares it.

closed --N consecutive failures--> open --cool-down--> half-open (one probe)
half-open --probe succeeds--> closed;  half-open --probe fails--> open again.

Each transition is one Lua script, so it is atomic across processes; the clock
is Redis's (``TIME``), so processes on different hosts agree on the cool-down.
An open breaker costs one Redis round trip and no connection attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError

from apps.core.degraded import redis_unavailable
from apps.llm import runtime
from apps.llm.conf import breaker_settings
from apps.llm.metrics import BREAKER_STATE, BREAKER_VALUES

# KEYS: state hash, probe lease. ARGV: cool-down ms, probe lease ms.
# Returns {allowed (0/1), state, consecutive failures}.
_ALLOW = """
local fields = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at')
local state = fields[1] or 'closed'
local failures = tonumber(fields[2] or '0')
if state == 'closed' then return {1, state, failures} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(fields[3] or '0') < tonumber(ARGV[1]) then return {0, 'open', failures} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {1, 'half_open', failures}
end
return {0, 'half_open', failures}
"""
# KEYS: state hash, probe lease. ARGV: failure threshold. Returns the new state.
_FAILURE = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[1])) then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('DEL', KEYS[2])
  return 'open'
end
return state
"""


@dataclass
class Permit:
    allowed: bool
    state: str
    failures: int


class CircuitBreaker:
    """The breaker of one provider alias."""

    def __init__(self, alias: str):
        self.alias = alias
        self.state_key = runtime.key("breaker", alias)
        self.probe_key = runtime.key("breaker", alias, "probe")

    def _config(self):
        config = breaker_settings()
        cooldown_ms = int(float(config["cooldown"]) * 1000)
        return int(config["failure_threshold"]), cooldown_ms

    async def allow(self) -> Permit:
        """May we call the provider now? At most one caller gets the half-open probe.
        Without Redis the answer is yes: better to try the provider than to refuse."""
        _, cooldown_ms = self._config()
        try:
            # The probe lease outlives a probe that never reports back (killed process).
            allowed, state, failures = await runtime.run_script(
                _ALLOW, [self.state_key, self.probe_key], [cooldown_ms, max(cooldown_ms, 60_000)]
            )
        except RedisError as exc:
            redis_unavailable("llm.breaker", exc, provider=self.alias)
            return Permit(True, "closed", -1)
        state = state.decode() if isinstance(state, bytes) else state
        BREAKER_STATE.labels(self.alias).set(BREAKER_VALUES[state])
        return Permit(bool(allowed), state, int(failures))

    def closed_permit(self, fields: list) -> Permit | None:
        """The permit :meth:`allow` would give, from the state hash's ``state`` and ``failures``
        read by the caller (HMGET, in a round trip it makes anyway), if the breaker is closed:
        then ``allow`` changes nothing. None otherwise: call ``allow``, whose script decides."""
        state, failures = fields
        state = state.decode() if isinstance(state, bytes) else (state or "closed")
        if state != "closed":
            return None
        BREAKER_STATE.labels(self.alias).set(BREAKER_VALUES[state])
        return Permit(True, state, int(failures or 0))

    async def record_success(self, permit: Permit | None = None) -> None:
        if permit is not None and permit.state == "closed" and permit.failures <= 0:
            return  # the common case costs no write
        try:
            async with runtime.aredis().pipeline(transaction=True) as pipe:
                pipe.hset(self.state_key, mapping={"state": "closed", "failures": 0})
                pipe.delete(self.probe_key)
                await pipe.execute()
        except RedisError as exc:
            redis_unavailable("llm.breaker", exc, provider=self.alias)
            return
        BREAKER_STATE.labels(self.alias).set(0)

    async def record_failure(self) -> str:
        threshold, _ = self._config()
        try:
            state = await runtime.run_script(_FAILURE, [self.state_key, self.probe_key], [threshold])
        except RedisError as exc:
            redis_unavailable("llm.breaker", exc, provider=self.alias)
            return "closed"
        state = state.decode() if isinstance(state, bytes) else state
        BREAKER_STATE.labels(self.alias).set(BREAKER_VALUES[state])
        return state

    def state(self) -> str:
        """Current state, read synchronously (admin, tests)."""
        raw = runtime.sync_redis().hget(self.state_key, "state")
        return raw.decode() if raw else "closed"

    def reset(self) -> None:
        runtime.sync_redis().delete(self.state_key, self.probe_key)
