"""Monthly USD budgets per user and per API key, checked before the call.

Spend lives in Redis as integer nano-dollars per (month, holder), seeded from the
ledger the first time it is needed in a month and increased when each call is
recorded. Before a call, one Lua script checks every holder and *reserves* the
call's worst-case cost (prompt tokens + the route's max output tokens at the
model's price). A call is refused when the budget is spent, or when it might
not fit next to calls already in flight. A call that is alone is let through
even if its worst case would cross the line, so the overrun is bounded by one
in-flight request. Reservations expire on their own if a process dies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db.models import Sum
from django.db.models.signals import post_delete, post_save
from redis.exceptions import RedisError

from apps.core.degraded import redis_unavailable
from apps.llm import runtime
from apps.llm.exceptions import BudgetExceeded
from apps.llm.metrics import BUDGET_REJECTED

NANO = Decimal(1_000_000_000)
SPEND_TTL = 40 * 24 * 3600

# KEYS: (spend, reservations) per holder. ARGV: n, estimate, member, ttl ms, limit_1..limit_n.
_RESERVE = """
local n = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n do
  local spend = redis.call('GET', KEYS[2 * i - 1])
  if not spend then return {'missing', i, 0} end
  spend = tonumber(spend)
  local limit = tonumber(ARGV[4 + i])
  if spend >= limit then return {'exhausted', i, spend} end
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now)
  local reserved, count = 0, 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2 * i], 0, -1)) do
    reserved = reserved + tonumber(string.match(m, ':(%d+)$'))
    count = count + 1
  end
  if count > 0 and spend + reserved + est > limit then return {'busy', i, spend} end
end
for i = 1, n do
  redis.call('ZADD', KEYS[2 * i], now + tonumber(ARGV[4]), ARGV[3])
  redis.call('PEXPIRE', KEYS[2 * i], ARGV[4])
end
return {'ok', 0, 0}
"""
# KEYS: (spend, reservations) per holder. ARGV: n, member, cost.
_SETTLE = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('ZREM', KEYS[2 * i], ARGV[2])
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then redis.call('INCRBY', KEYS[2 * i - 1], ARGV[3]) end
end
return 1
"""


def month_bounds(now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def to_nano(amount: Decimal) -> int:
    return int((Decimal(amount) * NANO).to_integral_value())


@dataclass(frozen=True)
class Holder:
    kind: str  # "user" | "api_key" | "anonymous" (every reader not signed in, together: id 0)
    id: int
    limit_usd: Decimal

    def keys(self, month: str) -> tuple[str, str]:
        return runtime.key("spend", month, self.kind, self.id), runtime.key("reserved", self.kind, self.id)


@dataclass
class Reservation:
    holders: list[Holder]
    member: str
    month: str

    def settle_command(self, pipe, cost: Decimal) -> None:
        """Queue 'release the reservation, add the real cost' on a pipeline."""
        keys = [k for holder in self.holders for k in holder.keys(self.month)]
        pipe.eval(_SETTLE, len(keys), *keys, len(self.holders), self.member, to_nano(cost))


# --- remembered user limits ---------------------------------------------------------------
# A user's limit read from the database is remembered for LLM_API_KEY_CACHE_SECONDS. Saving or
# deleting a UserBudget replaces a version token in Redis (after the commit); each process reads
# it at most once every LIMITS_VERSION_CHECK_SECONDS, on the way to a call, and forgets every
# remembered limit when it changed. So a new, raised or lowered budget applies in every process
# within about a second, for one Redis GET per process per second of traffic. If Redis cannot be
# read, the remembered limits stay until their TTL; so do changes that bypass model signals
# (``QuerySet.update()``): save the instance.
LIMITS_VERSION_CHECK_SECONDS = 1.0
_user_limits: dict[int, tuple[Decimal | None, float]] = {}


@dataclass
class _VersionSeen:
    value: bytes | None = None
    checked_at: float = float("-inf")


_limits_version = _VersionSeen()


def limits_version_key() -> str:
    return runtime.key("budgets", "version")


def _budget_changed(sender, instance, **kwargs):
    runtime.replace_version(limits_version_key())


post_save.connect(_budget_changed, sender="llm.UserBudget", dispatch_uid="llm-user-budget-saved")
post_delete.connect(_budget_changed, sender="llm.UserBudget", dispatch_uid="llm-user-budget-deleted")


async def _follow_limits_version() -> None:
    now = time.monotonic()
    if now - _limits_version.checked_at < LIMITS_VERSION_CHECK_SECONDS:
        return
    _limits_version.checked_at = now
    try:
        version = await runtime.aredis().get(limits_version_key())
    except RedisError as exc:
        redis_unavailable("llm.budget", exc)
        return
    if version != _limits_version.value:
        _user_limits.clear()
        _limits_version.value = version


def _user_limit(user_id: int) -> Decimal | None:
    from apps.llm.models import UserBudget

    cached = _user_limits.get(user_id)
    if cached and cached[1] > time.monotonic():
        return cached[0]
    limit = UserBudget.objects.filter(user_id=user_id).values_list("monthly_limit_usd", flat=True).first()
    if limit is None and settings.LLM_DEFAULT_USER_MONTHLY_BUDGET_USD is not None:
        limit = Decimal(str(settings.LLM_DEFAULT_USER_MONTHLY_BUDGET_USD))
    _user_limits[user_id] = (limit, time.monotonic() + settings.LLM_API_KEY_CACHE_SECONDS)
    return limit


def forget_cached_limits() -> None:
    _user_limits.clear()
    _limits_version.value, _limits_version.checked_at = None, float("-inf")


def may_apply(*, user, api_key) -> bool:
    """Whether any budget could hold this caller (no I/O): a signed-in user, an API key with a
    budget, or a reader not signed in while the anonymous budget is set. Only then are the
    holders looked up (:func:`holders_for`) and the prompt counted for the worst case."""
    return bool(getattr(user, "is_authenticated", False)) or (
        api_key is not None and api_key.monthly_budget_usd is not None) or (
        settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD is not None and is_anonymous(user, api_key))


async def holders_for(*, user, api_key) -> list[Holder]:
    holders = []
    user_id = getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None
    if user_id is not None:
        await _follow_limits_version()
        cached = _user_limits.get(user_id)
        limit = cached[0] if cached and cached[1] > time.monotonic() else await sync_to_async(_user_limit)(user_id)
        if limit is not None:
            holders.append(Holder("user", user_id, limit))
    if api_key is not None and api_key.monthly_budget_usd is not None:
        holders.append(Holder("api_key", api_key.pk, api_key.monthly_budget_usd))
    if is_anonymous(user, api_key) and settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD is not None:
        holders.append(Holder("anonymous", 0, Decimal(str(settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD))))
    return holders


def is_anonymous(user, api_key) -> bool:
    """A reader who is not signed in and brought no API key (``AnonymousUser``); background work
    calls with no user at all and is not anonymous."""
    return api_key is None and user is not None and not getattr(user, "is_authenticated", False)


def spent_this_month(holder: Holder) -> Decimal:
    """The holder's spend this month according to the database ledger."""
    from apps.llm.models import UsageRecord

    start, _ = month_bounds()
    rows = UsageRecord.objects.filter(
        **({"anonymous": True} if holder.kind == "anonymous" else
           {"user_id" if holder.kind == "user" else "api_key_id": holder.id}), created_at__gte=start)
    total = rows.aggregate(s=Sum("cost_usd"))["s"]
    return total or Decimal("0")


async def reserve(*, holders: list[Holder], estimate: Decimal, call_id: str, ttl_s: float) -> Reservation | None:
    """Reserve ``estimate`` USD against every budget in ``holders`` (see
    :func:`holders_for`), or raise :class:`BudgetExceeded`. None if Redis is down."""
    start, end = month_bounds()
    month = start.strftime("%Y%m")
    est = to_nano(estimate)
    member = f"{call_id}:{est}"
    keys = [k for holder in holders for k in holder.keys(month)]
    client = runtime.aredis()
    for _ in range(3):
        try:
            status, index, spend = await runtime.run_script(
                _RESERVE, keys,
                [len(holders), est, member, int(ttl_s * 1000), *[to_nano(h.limit_usd) for h in holders]],
            )
        except RedisError as exc:
            # Budgets fail open: a Redis outage must not stop every call. The ledger still records them.
            redis_unavailable("llm.budget", exc)
            return None
        status = status.decode() if isinstance(status, bytes) else status
        if status == "ok":
            return Reservation(holders, member, month)
        holder = holders[int(index) - 1]
        if status == "missing":
            baseline = await sync_to_async(spent_this_month)(holder)
            await client.set(holder.keys(month)[0], to_nano(baseline), nx=True, ex=SPEND_TTL)
            continue
        BUDGET_REJECTED.labels(holder.kind).inc()
        spent = Decimal(int(spend)) / NANO
        raise BudgetExceeded(_refusal(holder, exhausted=status == "exhausted"), holder=holder.kind,
                             limit_usd=holder.limit_usd, spent_usd=spent.quantize(Decimal("0.000001")), resets_at=end)
    raise BudgetExceeded("Budget state unavailable.", holder=holders[0].kind)


def _refusal(holder: Holder, *, exhausted: bool) -> str:
    if holder.kind == "anonymous":
        return ("Answers for readers who are not signed in have used up this month's budget; sign in to ask."
                if exhausted else "Answers for readers who are not signed in have nearly used up this month's "
                                  "budget; try again in a moment, or sign in.")
    who = "Your" if holder.kind == "user" else "This API key's"
    return (f"{who} monthly LLM budget of ${holder.limit_usd} is exhausted." if exhausted else
            f"{who} monthly LLM budget is nearly exhausted and another request is in flight.")
