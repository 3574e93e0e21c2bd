"""The cost ledger and budgets."""

import asyncio
import time
from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.llm import budgets, ledger
from apps.llm.exceptions import BudgetExceeded
from apps.llm.models import UsageRecord, UserBudget
from apps.llm.services import ChatRequest, acomplete, stream_chat
from apps.llm.testing import collect, run
from tests.factories.llm import LLMUserFactory, UserBudgetFactory, make_api_key
from tests.llm.conftest import question


def test_cost_comes_from_the_price_table(proxy):
    # fake-model: $2.50 in, $10.00 out per 1M tokens
    assert ledger.call_cost("fake-model", 1000, 500) == Decimal("0.00750000")
    assert ledger.call_cost("unpriced-model", 1000, 500) == Decimal("0")


@pytest.mark.django_db
def test_ledger_total_equals_the_sum_of_per_call_costs_over_100_mixed_calls(proxy, settings):
    settings.LLM_BREAKER = {"failure_threshold": 1000, "cooldown": 0.5}  # keep every kind of call in the mix
    user = LLMUserFactory()
    key, _ = make_api_key(user=user)
    costs: list[Decimal] = []
    kinds: dict[str, int] = {}

    async def mixed_calls():
        for i in range(100):
            kind = ("stream", "complete", "cached", "fallback", "partial", "extractive")[i % 6]
            kinds[kind] = kinds.get(kind, 0) + 1
            proxy.primary.configure(fail=None, text=None, tokens=5 + i % 7)
            proxy.secondary.configure(fail=None, tokens=3 + i % 5)
            messages = question(f"question number {i}" if kind != "cached" else "the cached question")
            request = ChatRequest(route="chat", messages=messages, user=user, api_key=key if i % 2 else None,
                                  cache=kind == "cached")
            if kind == "fallback":
                proxy.primary.configure(fail="500")
            elif kind == "partial":
                proxy.primary.configure(fail="drop", fail_at=2)
            elif kind == "extractive":
                proxy.primary.configure(fail="500")
                proxy.secondary.configure(fail="500")
            if kind == "complete":
                costs.append((await acomplete(request)).cost)
                continue
            events = [event async for event in stream_chat(request)]
            costs.append(events[-1].cost)

    run(mixed_calls)
    assert ledger.flush() == 100
    rows = UsageRecord.objects.all()
    assert rows.count() == 100
    assert rows.aggregate(total=Sum("cost_usd"))["total"] == sum(costs)
    assert sum(costs) > 0
    assert rows.filter(outcome="partial").count() == kinds["partial"]
    assert rows.filter(cache_hit=True).count() == kinds["cached"] - 1
    assert set(rows.values_list("provider", flat=True)) == {"primary", "secondary", "extractive"}
    assert rows.filter(user=user).count() == 100 and rows.filter(api_key=key).count() == 50


@pytest.mark.django_db
def test_flush_is_idempotent_and_survives_a_crashed_flusher(proxy):
    from apps.llm import runtime

    run(collect, ChatRequest(route="chat", messages=question(), cache=False))
    run(collect, ChatRequest(route="chat", messages=question("another"), cache=False))
    # A flusher that claimed the rows and died before writing them:
    client = runtime.sync_redis()
    keys = ledger._keys()
    client.eval(ledger._CLAIM, 4, *keys, 500)
    assert ledger.pending_count() == 0 and UsageRecord.objects.count() == 0
    assert ledger.flush(reclaim_after=-1) == 2  # the stale claim is put back and written
    assert ledger.flush(reclaim_after=-1) == 0
    assert UsageRecord.objects.count() == 2


@pytest.mark.django_db
def test_an_exhausted_user_budget_refuses_before_calling_upstream(proxy):
    budget = UserBudgetFactory(monthly_limit_usd=Decimal("0.0005"))
    calls = 0
    with pytest.raises(BudgetExceeded) as caught:
        for i in range(50):
            run(collect, ChatRequest(route="chat", messages=question(f"q{i}"), user=budget.user, cache=False))
            calls += 1
    assert 1 <= calls < 50
    assert proxy.primary.calls() == calls  # the refused call never reached the provider
    error = caught.value
    assert error.holder == "user" and error.limit_usd == Decimal("0.0005")
    assert error.spent_usd >= Decimal("0.0005")
    ledger.flush()
    spent = UsageRecord.objects.filter(user=budget.user).aggregate(s=Sum("cost_usd"))["s"]
    # Overrun bounded by one request: without the last call we were under the limit.
    last = UsageRecord.objects.filter(user=budget.user).order_by("-created_at").first().cost_usd
    assert spent - last < Decimal("0.0005") <= spent


@pytest.mark.django_db
def test_budget_seeds_from_the_ledger_after_redis_forgets(proxy):
    budget = UserBudgetFactory(monthly_limit_usd=Decimal("0.0001"))
    UsageRecord.objects.create(route="chat", user=budget.user, provider="primary", model="fake-model",
                               cost_usd=Decimal("0.0002"))
    with pytest.raises(BudgetExceeded):
        run(collect, ChatRequest(route="chat", messages=question(), user=budget.user))
    assert proxy.primary.calls() == 0


@pytest.mark.django_db
def test_concurrent_calls_cannot_overrun_by_more_than_one_in_flight_request(proxy):
    # The worst case of one call (200 output tokens at $10/1M = $0.002) exceeds what is left.
    budget = UserBudgetFactory(monthly_limit_usd=Decimal("0.003"))
    proxy.primary.configure(tokens=20, token_delay=0.01)

    async def five_at_once():
        async def one(i):
            try:
                return (await acomplete(ChatRequest(route="chat", messages=question(f"q{i}"), user=budget.user,
                                                    cache=False))).cost
            except BudgetExceeded:
                return None

        return await asyncio.gather(*(one(i) for i in range(5)))

    results = run(five_at_once)
    assert sum(r is not None for r in results) == 1
    assert proxy.primary.calls() == 1


@pytest.mark.django_db
def test_a_row_whose_user_was_deleted_before_the_flush_is_kept_without_the_link(proxy):
    user = LLMUserFactory()
    gone = LLMUserFactory()
    run(collect, ChatRequest(route="chat", messages=question("one"), user=user, cache=False))
    run(collect, ChatRequest(route="chat", messages=question("two"), user=gone, cache=False))
    gone.delete()
    assert ledger.flush() == 2
    assert UsageRecord.objects.filter(user=user).count() == 1
    assert UsageRecord.objects.filter(user__isnull=True).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_changed_user_budget_applies_within_the_version_check_though_limits_are_remembered(proxy, settings,
                                                                                             monkeypatch):
    # Limits are remembered far longer than this test; only the budgets' version in Redis, which
    # saving or deleting a UserBudget replaces after the commit, tells this process to read again.
    settings.LLM_API_KEY_CACHE_SECONDS = 300
    monkeypatch.setattr(budgets, "LIMITS_VERSION_CHECK_SECONDS", 0.2)
    user = LLMUserFactory()

    def ask():
        return run(collect, ChatRequest(route="chat", messages=question("q"), user=user, cache=False))

    ask()  # no budget: remembered as none
    budget = UserBudget.objects.create(user=user, monthly_limit_usd=Decimal("0"))
    time.sleep(0.3)
    with pytest.raises(BudgetExceeded):
        ask()
    calls = proxy.primary.calls()
    budget.delete()
    time.sleep(0.3)
    ask()
    assert proxy.primary.calls() == calls + 1


@pytest.mark.django_db
def test_readers_without_an_account_share_one_monthly_budget(proxy, settings):
    """LLM_ANONYMOUS_MONTHLY_BUDGET_USD caps what all readers who are not signed in spend
    together (a new session is free to make, so no per-session budget could). Their rows are
    marked ``anonymous``; signed-in readers and background work (no user at all) are not counted
    against it, and it is seeded from those rows when Redis has forgotten the month's spend."""
    from django.contrib.auth.models import AnonymousUser

    from apps.llm import runtime

    settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD = "0.0005"
    calls = 0
    with pytest.raises(BudgetExceeded) as caught:
        for i in range(50):
            run(collect, ChatRequest(route="chat", messages=question(f"q{i}"), user=AnonymousUser(), cache=False))
            calls += 1
    assert 1 <= calls < 50 and proxy.primary.calls() == calls  # the refused call never reached the provider
    assert caught.value.holder == "anonymous" and "sign in" in caught.value.message
    signed_in = LLMUserFactory()
    run(collect, ChatRequest(route="chat", messages=question("mine"), user=signed_in, cache=False))
    run(collect, ChatRequest(route="enrich", messages=question("background"), cache=False))  # no user: not anonymous
    assert proxy.primary.calls() == calls + 2
    ledger.flush()
    anonymous = UsageRecord.objects.filter(anonymous=True)
    assert anonymous.count() == calls and not anonymous.filter(user__isnull=False).exists()
    assert UsageRecord.objects.filter(anonymous=False).count() == 2
    spent = anonymous.aggregate(s=Sum("cost_usd"))["s"]
    assert spent - anonymous.order_by("-created_at").first().cost_usd < Decimal("0.0005") <= spent

    # Redis forgets the month's spend: the next anonymous question is refused from the ledger's rows.
    client = runtime.sync_redis()
    for key in client.scan_iter(match=runtime.key("spend", "*", "anonymous", "*")):
        client.delete(key)
    with pytest.raises(BudgetExceeded):
        run(collect, ChatRequest(route="chat", messages=question("again"), user=AnonymousUser(), cache=False))
    assert proxy.primary.calls() == calls + 2
