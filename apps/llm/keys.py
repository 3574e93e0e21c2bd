"""Admitting a request on ``/v1/``: is the API key valid *now*, and is it within
its requests-per-minute and tokens-per-minute limits?

Each web process remembers the keys it has looked up (``LLM_API_KEY_CACHE_SECONDS``),
so the database is not read on every request. What makes revocation immediate
is a **key version** in Redis: a random token replaced (after the transaction
commits) whenever a key is saved or deleted, or a user is saved or deleted.
A remembered key carries the version that was current *before* it was read
from the database; every request runs one Lua script that compares it with
Redis's version and, if the key has a limit, counts the request:

- versions differ -> the script answers ``stale`` (counting nothing) and the
  key is read again from the database, then admitted against the new version;
- over the limit -> ``limited``, with the seconds until the next request fits;
- otherwise ``ok``, with the requests left.

One round trip for both checks, on every request, whatever the key; the caller
may fold one more read into it (``also_get``: the endpoint reads the response
cache there, so a default, cacheable request makes no more round trips than
before keys were checked). If Redis is unavailable, requests are admitted on the
remembered key (the cache's TTL is then the bound on revocation; an expired entry
is read from the database) and without a rate limit, as budgets and breakers fail open.

The limit is a GCRA (generic cell rate algorithm, the token bucket expressed as
one timestamp): ``N`` requests per minute allow a burst of ``N`` and then one
request every ``60/N`` seconds, on Redis's clock, one Redis key per API key and limit.

A tokens-per-minute limit is the same bucket filled by the tokens of calls that ended
(prompt and completion; an embedding's inputs; a cache hit spends none): a call's tokens
are only known at its end, so the admission checks the bucket and the call's end spends
from it (``spend_tokens_command``, in the round trip that queues the call's ledger row). A
request is refused while more than a minute's worth is spent; the call admitted last may
go over by its own tokens, which the key then waits out.

Changes that bypass model signals (``QuerySet.update()``) do not bump the version;
use ``services.api_key_revoke`` or save the instance.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models.signals import post_delete, post_save
from prometheus_client import Counter
from redis.exceptions import RedisError

from apps.core.degraded import redis_unavailable
from apps.llm import runtime

RATE_LIMITED = Counter("quire_llm_rate_limited_total", "Requests on /v1/ refused by an API key's requests-per-minute "
                       "limit")
KEY_RELOADS = Counter("quire_llm_api_key_reloads_total", "API key lookups repeated because the key version changed")
ADMISSION_DEGRADED = Counter("quire_llm_api_key_admission_degraded_total", "Requests admitted without the Redis "
                             "check (Redis unavailable)")

_UNKNOWN = "?"  # never equals a version: forces a reload
_ANY = "*"  # skip the version check (after repeated reloads)

# KEYS: version[, rate state if rpm > 0][, token state if tpm > 0][, a key to GET when admitted].
# ARGV: version seen (or '*'), requests per minute, tokens per minute (0 = no limit).
# Returns {"status:remaining:retry ms:reset ms:tokens remaining:tokens reset ms:version", the GET's
# value or false}: two replies to parse instead of eight (redis-py's RESP parsing costs per element).
# The token state is checked, not spent: a call's tokens are known when it ends (_SPEND_TOKENS).
_ADMIT = """
local version = redis.call('GET', KEYS[1]) or ''
if ARGV[1] ~= '*' and version ~= ARGV[1] then return {'stale:-1:0:0:-1:0:' .. version, false} end
local limit, token_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local remaining, reset, tokens_left, tokens_reset, at = -1, 0, -1, 0, 2
local period = 60000000
local now = 0
if limit > 0 or token_limit > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local rate_at = at
if limit > 0 then at = at + 1 end
if token_limit > 0 then
  local spent_until = tonumber(redis.call('GET', KEYS[at]) or '0')
  at = at + 1
  if spent_until < now then spent_until = now end
  if spent_until - period > now then
    return {'tokens:0:' .. math.ceil((spent_until - period - now) / 1000) .. ':0:0:'
            .. math.ceil((spent_until - now) / 1000) .. ':' .. version, false}
  end
  tokens_left = math.floor((period - (spent_until - now)) * token_limit / period)
  tokens_reset = math.ceil((spent_until - now) / 1000)
end
if limit > 0 then
  local interval = period / limit
  local tat = tonumber(redis.call('GET', KEYS[rate_at]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - period > now then
    return {'limited:0:' .. math.ceil((new_tat - period - now) / 1000) .. ':' .. math.ceil((tat - now) / 1000) .. ':'
            .. tokens_left .. ':' .. tokens_reset .. ':' .. version, false}
  end
  redis.call('SET', KEYS[rate_at], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  remaining = math.floor((period - (new_tat - now) + 1) / interval)
  reset = math.ceil((new_tat - now) / 1000)
end
local value = false
if KEYS[at] then value = redis.call('GET', KEYS[at]) end
return {'ok:' .. remaining .. ':0:' .. reset .. ':' .. tokens_left .. ':' .. tokens_reset .. ':' .. version, value}
"""
# KEYS: token state. ARGV: tokens the call used, tokens per minute. The key's spending moves its
# "spent until" mark on by the minutes those tokens are worth (a token bucket as one timestamp).
_SPEND_TOKENS = """
local period = 60000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local spent_until = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent_until < now then spent_until = now end
spent_until = spent_until + tonumber(ARGV[1]) * period / tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', spent_until), 'PX', math.ceil((spent_until - now) / 1000) + 1000)
return 1
"""


def version_key() -> str:
    return runtime.key("api_keys", "version")


def rate_key(key_id, limit: int) -> str:
    # The limit is part of the name: a changed limit starts from a full allowance at once.
    return runtime.key("ratelimit", "api_key", key_id, limit)


def token_key(key_id, limit: int) -> str:
    return runtime.key("ratelimit", "api_key_tokens", key_id, limit)


def spend_tokens_command(pipe, key, tokens: int) -> None:
    """Queue, on a Redis pipeline, the spending of ``tokens`` by ``key`` (an ``ApiKey``) if it
    has a tokens-per-minute limit; nothing otherwise."""
    limit = tokens_per_minute(key) if key is not None else None
    if limit is not None and tokens > 0:
        pipe.eval(_SPEND_TOKENS, 1, token_key(key.pk, limit), tokens, limit)


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


# --- the version --------------------------------------------------------------------------
def bump_version_on_commit() -> None:
    """Make every web process read its API keys from the database again, after the commit."""
    runtime.replace_version(version_key())


def _key_saved(sender, instance, created, **kwargs):
    if not created:  # a new key was never remembered anywhere: nothing to invalidate
        bump_version_on_commit()


def _user_saved(sender, instance, created, update_fields=None, **kwargs):
    # A key only works while its user is active; logins save last_login alone and change nothing here.
    if not created and (update_fields is None or "is_active" in update_fields):
        bump_version_on_commit()


def _deleted(sender, instance, **kwargs):
    bump_version_on_commit()


post_save.connect(_key_saved, sender="llm.ApiKey", dispatch_uid="llm-api-key-saved")
post_delete.connect(_deleted, sender="llm.ApiKey", dispatch_uid="llm-api-key-deleted")
post_save.connect(_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="llm-api-key-user-saved")
post_delete.connect(_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="llm-api-key-user-deleted")


# --- remembered keys ---------------------------------------------------------------------
@dataclass
class _Remembered:
    key: object  # ApiKey or None (no such active key)
    version: str
    expires: float


_remembered: dict[str, _Remembered] = {}


def forget() -> None:
    _remembered.clear()


def lookup(digest: str):
    """The active ``ApiKey`` (user loaded) whose hash is ``digest``, or None: the database's answer."""
    from apps.llm.models import ApiKey

    return (ApiKey.objects.select_related("user")
            .filter(key_hash=digest, is_active=True, user__is_active=True).first())


async def _reload(digest: str, version: str) -> _Remembered:
    KEY_RELOADS.inc()
    key = await sync_to_async(lookup)(digest)
    if len(_remembered) > 10_000:
        _remembered.clear()
    entry = _remembered[digest] = _Remembered(key, version, time.monotonic() + settings.LLM_API_KEY_CACHE_SECONDS)
    return entry


def requests_per_minute(key) -> int | None:
    """The key's limit: its own (0 = unlimited), else ``LLM_API_KEY_DEFAULT_RPM``; None = unlimited."""
    limit = key.requests_per_minute
    if limit is None:
        limit = settings.LLM_API_KEY_DEFAULT_RPM
    return limit or None


def tokens_per_minute(key) -> int | None:
    """The key's token limit: its own (0 = unlimited), else ``LLM_API_KEY_DEFAULT_TPM``; None = unlimited."""
    limit = key.tokens_per_minute
    if limit is None:
        limit = settings.LLM_API_KEY_DEFAULT_TPM
    return limit or None


@dataclass
class Admission:
    """The verdict on one request. ``key`` is None for an unknown or revoked key."""

    key: object = None
    limit: int | None = None  # requests per minute; None = unlimited
    remaining: int | None = None
    retry_after: float | None = None  # seconds; set when the request is refused by a limit
    reset_after: float | None = None  # seconds until the full limit is available again
    got: tuple[str, bytes | None] | None = None  # (key, value) of the ``also_get`` read, if it was made
    token_limit: int | None = None  # tokens per minute; None = unlimited
    tokens_remaining: int | None = None
    tokens_reset_after: float | None = None
    limited_by: str | None = None  # "requests" or "tokens" when refused

    @property
    def limited(self) -> bool:
        return self.retry_after is not None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def admit(raw_key: str, *, count: bool = True,
                also_get: Callable[[object], str | None] | None = None) -> Admission:
    """Check ``raw_key`` against the current key version and, if ``count`` and the
    key has a limit, count this request against it (see the module docstring).
    ``also_get(key)`` may name a Redis key to read in the same round trip when the
    request is admitted; its value is returned in ``.got``."""
    digest = hash_api_key(raw_key)
    entry = _remembered.get(digest)
    if entry is not None and entry.expires <= time.monotonic():
        entry = None
    seen = entry.version if entry is not None else _UNKNOWN
    for attempt in range(4):
        key = entry.key if entry is not None else None
        limit = requests_per_minute(key) if key is not None and count else None
        token_limit = tokens_per_minute(key) if key is not None and count else None
        redis_keys = [version_key()]
        if limit is not None:
            redis_keys.append(rate_key(key.pk, limit))
        if token_limit is not None:
            redis_keys.append(token_key(key.pk, token_limit))
        extra = also_get(key) if also_get is not None and key is not None else None
        if extra is not None:
            redis_keys.append(extra)
        try:
            head, value = await runtime.run_script(
                _ADMIT, redis_keys, [seen if attempt < 3 else _ANY, limit or 0, token_limit or 0])
        except RedisError as exc:
            redis_unavailable("llm.api_key", exc)
            ADMISSION_DEGRADED.inc()
            if entry is None:
                entry = await _reload(digest, _UNKNOWN)
            return Admission(entry.key)
        status, remaining, retry_ms, reset_ms, tokens_left, tokens_reset_ms, version = _text(head).split(":", 6)
        if status == "stale":
            # Read the key after reading the version: a change committed in between bumps
            # the version again, and the next request reloads once more.
            entry = await _reload(digest, version)
            seen = version
            continue
        if key is None:
            return Admission(None)
        tokens = {"token_limit": token_limit, "tokens_remaining": int(tokens_left) if token_limit else None,
                  "tokens_reset_after": int(tokens_reset_ms) / 1000 if token_limit else None}
        if status in ("limited", "tokens"):
            RATE_LIMITED.inc()
            return Admission(key, limit, 0 if limit else None, max(int(retry_ms), 1) / 1000, int(reset_ms) / 1000,
                             limited_by="requests" if status == "limited" else "tokens", **tokens)
        got = (extra, value) if extra is not None else None
        if limit is None:
            return Admission(key, got=got, **tokens)
        return Admission(key, limit, int(remaining), None, int(reset_ms) / 1000, got, **tokens)
    raise AssertionError("unreachable: the last attempt skips the version check")
