"""Fallback, retries, timeouts, circuit breakers and cancellation against a real
HTTP upstream that fails on command. Timeouts and cool-downs are shortened in
config/settings/test.py (first token 0.5 s, breaker cool-down 0.5 s)."""

import asyncio
import json
import subprocess
import sys
import time

import pytest

from apps.llm import ledger
from apps.llm.breaker import CircuitBreaker
from apps.llm.models import UsageRecord
from apps.llm.services import ChatRequest, stream_chat
from apps.llm.testing import collect, run
from tests.conftest import BASE_DIR, child_env
from tests.llm.conftest import question


def ask(**kwargs):
    return run(collect, ChatRequest(route="chat", messages=question(), cache=False, **kwargs))


def answer_text(events) -> str:
    return "".join(e.text for e in events if e.type == "token")


@pytest.mark.django_db
def test_primary_500s_fall_back_to_the_secondary(proxy):
    proxy.primary.configure(fail="500")
    proxy.secondary.configure(text="secondary answer")
    events = ask()
    assert events[-1].type == "done" and events[-1].provider == "secondary"
    assert answer_text(events) == "secondary answer"
    assert proxy.primary.calls() == 2  # one try + one retry before giving up
    ledger.flush()
    row = UsageRecord.objects.get()
    assert row.provider == "secondary" and row.fallbacks == 1 and "HTTP 500" in row.error


@pytest.mark.django_db
def test_connect_refusal_and_malformed_chunks_fall_back(proxy):
    proxy.primary.configure(fail="refuse")
    assert ask()[-1].provider == "secondary"
    proxy.primary.configure(fail="malformed")
    events = ask()
    assert events[-1].provider == "secondary" and answer_text(events).startswith("tok0")


@pytest.mark.django_db
def test_when_every_model_fails_the_extractive_backend_still_answers(proxy):
    proxy.primary.configure(fail="500")
    proxy.secondary.configure(fail="500")
    passages = [{"n": 1, "title": "Aspirin", "text": "Aspirin reduces fever.", "document_id": 1}]
    events = ask(passages=passages)
    assert events[-1].type == "done" and events[-1].provider == "extractive"
    assert "Aspirin reduces fever. [1]" in events[-1].text


@pytest.mark.django_db
def test_retry_honours_retry_after(proxy):
    proxy.primary.configure(fail="429", fail_count=1, retry_after="1")
    events = ask()
    assert events[-1].provider == "primary"  # the retry succeeded on the same provider
    first, second = proxy.primary.requests
    assert second["time"] - first["time"] >= 1.0


@pytest.mark.django_db
def test_retry_after_longer_than_allowed_moves_to_the_next_provider(proxy):
    proxy.primary.configure(fail="429", retry_after="30")
    events = ask()
    assert events[-1].provider == "secondary"
    assert proxy.primary.calls() == 1


@pytest.mark.django_db
def test_a_hang_hits_the_first_token_timeout_and_falls_back(proxy):
    proxy.primary.configure(fail="hang")
    started = time.monotonic()
    events = ask()
    assert events[-1].provider == "secondary"
    assert time.monotonic() - started < 3  # first-token timeout is 0.5 s; no retry of a hang
    assert proxy.primary.calls() == 1
    deadline = time.monotonic() + 2
    while not proxy.primary.disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.primary.disconnects  # the hung connection was closed, not leaked
    ledger.flush()
    assert "first-token timeout" in UsageRecord.objects.get().error


@pytest.mark.django_db
def test_mid_stream_drop_ends_with_an_error_event_and_a_partial_ledger_row(proxy):
    proxy.primary.configure(fail="drop", fail_at=2)
    events = ask()
    assert [e.type for e in events] == ["token", "token", "error"]
    error = events[-1]
    assert error.partial is True and error.code == "llm_unavailable"
    assert proxy.secondary.calls("/v1/messages") == 0  # no splicing of a second provider's text
    ledger.flush()
    row = UsageRecord.objects.get(pk=error.usage_record_id)
    assert row.outcome == "partial" and row.provider == "primary"
    assert row.completion_tokens > 0 and row.tokens_estimated is True and row.cost_usd > 0


@pytest.mark.django_db
def test_client_going_away_cancels_the_upstream_request_within_a_second(proxy):
    proxy.primary.configure(tokens=400, token_delay=0.02)

    async def read_three_then_leave():
        stream = stream_chat(ChatRequest(route="chat", messages=question(), cache=False))
        received = 0
        async for _event in stream:
            received += 1
            if received == 3:
                break
        await stream.aclose()
        left = time.monotonic()
        while not proxy.primary.disconnects and time.monotonic() - left < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the ledger write of a cancelled call runs as its own task
        return proxy.primary.disconnects[0] - left if proxy.primary.disconnects else None

    waited = run(read_three_then_leave)
    assert waited is not None and waited < 1.0
    ledger.flush()
    row = UsageRecord.objects.get()
    assert row.outcome == "cancelled" and row.completion_tokens > 0


@pytest.mark.django_db
def test_cancelling_the_consuming_task_cancels_upstream_too(proxy):
    proxy.primary.configure(tokens=400, token_delay=0.02)

    async def consume(seen: list):
        async for event in stream_chat(ChatRequest(route="chat", messages=question(), cache=False)):
            seen.append(event)

    async def cancel_mid_answer():
        seen: list = []
        task = asyncio.create_task(consume(seen))
        while len(seen) < 3:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        left = time.monotonic()
        while not proxy.primary.disconnects and time.monotonic() - left < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return proxy.primary.disconnects[0] - left if proxy.primary.disconnects else None

    waited = run(cancel_mid_answer)
    assert waited is not None and waited < 1.0
    ledger.flush()
    assert UsageRecord.objects.get().outcome == "cancelled"


CHILD = """
import json, sys
import django
django.setup()
from django.test import override_settings
config = json.loads(sys.argv[1])
with override_settings(LLM_PROVIDERS=config["providers"], LLM_ROUTES=config["routes"],
                       LLM_BREAKER=config["breaker"]):
    from apps.llm.breaker import CircuitBreaker
    from apps.llm.services import ChatRequest, complete
    before = CircuitBreaker("primary").state()
    result = complete(ChatRequest(route="chat", messages=[{"role": "user", "content": "hi"}], cache=False))
    print(json.dumps({"before": before, "after": CircuitBreaker("primary").state(), "provider": result.provider}))
"""


def run_in_other_process(settings) -> dict:
    config = {"providers": settings.LLM_PROVIDERS, "routes": settings.LLM_ROUTES, "breaker": settings.LLM_BREAKER}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], cwd=BASE_DIR, env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_breaker_opens_skips_half_opens_and_closes_with_state_shared_by_two_processes(proxy, settings):
    # A cool-down longer than a child process's start-up, so "open" is observed there.
    settings.LLM_BREAKER = {"failure_threshold": 3, "cooldown": 3.0}
    breaker = CircuitBreaker("primary")
    proxy.primary.configure(fail="500")
    for _ in range(3):
        assert ask()[-1].provider == "secondary"
    assert breaker.state() == "open"
    opened = time.monotonic()
    calls = proxy.primary.calls()

    # Open: skipped instantly (a hanging primary would cost the 0.5 s first-token
    # timeout if it were tried), here and in another process.
    proxy.primary.configure(fail="hang")
    started = time.monotonic()
    assert ask()[-1].provider == "secondary"
    assert time.monotonic() - started < 0.4
    other = run_in_other_process(proxy.settings)
    assert other == {"before": "open", "after": "open", "provider": "secondary"}
    assert proxy.primary.calls() == calls

    # After the cool-down, the other process's call is the half-open probe; it succeeds and closes.
    proxy.primary.configure(fail=None)
    time.sleep(max(0.0, opened + 3.1 - time.monotonic()))
    other = run_in_other_process(proxy.settings)
    assert other == {"before": "open", "after": "closed", "provider": "primary"}
    assert breaker.state() == "closed"
    assert ask()[-1].provider == "primary"


@pytest.mark.django_db
def test_read_with_the_cache_a_closed_breaker_costs_no_script_and_an_open_one_is_obeyed(proxy, monkeypatch, settings):
    """A cacheable call reads the first provider's breaker state with the cache (one round
    trip): closed, no breaker script runs; open, the script decides and the provider is skipped."""
    from apps.llm import runtime

    settings.LLM_BREAKER = {"failure_threshold": 3, "cooldown": 30.0}
    scripts = []
    real_script = runtime.run_script

    async def counted(script, keys, args):
        scripts.append(keys[0])
        return await real_script(script, keys, args)

    monkeypatch.setattr(runtime, "run_script", counted)
    cached_ask = lambda text: run(collect, ChatRequest(route="chat", messages=question(text)))  # noqa: E731
    proxy.primary.configure(text="primary answer")
    assert cached_ask("closed?")[-1].provider == "primary" and scripts == []

    breaker = CircuitBreaker("primary")

    async def open_it():
        for _ in range(3):
            await breaker.record_failure()

    run(open_it)
    scripts.clear()
    calls = proxy.primary.calls()
    assert breaker.state() == "open"
    assert cached_ask("open?")[-1].provider == "secondary" and proxy.primary.calls() == calls
    # The allow script decided for the primary; the secondary, reached by fallback, has its own.
    assert scripts == [breaker.state_key, CircuitBreaker("secondary").state_key]
    breaker.reset()


@pytest.mark.django_db
def test_half_open_lets_exactly_one_probe_through_and_a_failed_probe_reopens(proxy):
    breaker = CircuitBreaker("primary")

    async def open_then_race():
        for _ in range(3):
            await breaker.record_failure()
        await asyncio.sleep(0.6)
        permits = await asyncio.gather(*(breaker.allow() for _ in range(5)))
        return sorted(p.allowed for p in permits)

    assert run(open_then_race) == [False, False, False, False, True]
    assert breaker.state() == "half_open"
    breaker.reset()

    proxy.primary.configure(fail="500")
    for _ in range(3):
        ask()
    time.sleep(0.6)
    calls = proxy.primary.calls()
    assert ask()[-1].provider == "secondary"
    assert proxy.primary.calls() == calls + 1  # one probe, not retried
    assert breaker.state() == "open"


@pytest.mark.django_db
def test_without_redis_calls_still_answer_and_are_recorded(proxy, redis_server, settings):
    from apps.llm.services import complete

    settings.REDIS_URL = redis_server.url
    redis_server.stop()
    events = ask()
    assert events[-1].type == "done" and events[-1].provider == "primary"
    result = complete(ChatRequest(route="chat", messages=question("again"), cache=True))
    assert result.provider == "primary" and not result.cached
    # No Redis queue: each row went straight to the database.
    rows = UsageRecord.objects.order_by("created_at")
    assert [str(r.id) for r in rows] == [events[-1].usage_record_id, result.usage_record_id]


@pytest.mark.django_db
def test_a_prompt_too_long_for_one_model_moves_to_the_next_provider(proxy):
    proxy.primary.configure(fail="context")
    events = ask()
    assert events[-1].type == "done" and events[-1].provider == "secondary"
    assert proxy.primary.calls() == 1  # not retried
    assert CircuitBreaker("primary").state() == "closed"  # the provider is fine


@pytest.mark.django_db
def test_a_request_the_provider_rejects_is_an_error_without_fallback(proxy):
    proxy.primary.configure(fail="400")
    events = ask()
    assert [e.type for e in events] == ["error"]
    assert events[-1].code == "llm_bad_request" and events[-1].partial is False
    assert proxy.primary.calls() == 1 and proxy.secondary.calls("/v1/messages") == 0
    ledger.flush()
    assert UsageRecord.objects.get().outcome == "error"
