"""API keys on /v1/: revocation reaches every web process at once, and per-key
requests-per-minute limits. Real uvicorn processes on the test database and this
run's Redis, called over HTTP."""

import re
import time

import httpx
import openai
import pytest
from django.urls import reverse

from apps.llm.models import ApiKey
from apps.llm.services import aapi_key_admit, api_key_create, api_key_revoke
from apps.llm.testing import run
from tests.factories.llm import LLMStaffFactory, LLMUserFactory, make_api_key
from tests.llm.conftest import start_proxy_server

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def two_servers(django_db_setup, _fake_upstream_server):
    """Two web processes that remember API keys for five minutes."""
    servers = [start_proxy_server(_fake_upstream_server, DJANGO_SETTINGS_MODULE="tests.llm.settings_key_cache")
               for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def limited_server(django_db_setup, _fake_upstream_server):
    """A web process whose keys default to 3 requests per minute."""
    server = start_proxy_server(_fake_upstream_server, LLM_API_KEY_DEFAULT_RPM="3")
    yield server
    server.stop()


def chat(server, raw_key: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json={"model": "chat", "messages": MESSAGES, **body},
                      headers={"Authorization": f"Bearer {raw_key}"}, timeout=20)


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "not_authenticated" and error["request_id"]


def revoke_with_service(key, client):
    api_key_revoke(api_key=key)


def untick_is_active_in_admin(key, client):
    response = client.post(reverse("admin:llm_apikey_change", args=[key.pk]),
                           {"name": key.name, "user": key.user_id, "monthly_budget_usd": "",
                            "requests_per_minute": ""})  # is_active left unticked
    assert response.status_code == 302


def revoke_action_in_admin(key, client):
    response = client.post(reverse("admin:llm_apikey_changelist"),
                           {"action": "revoke_selected", "_selected_action": [key.pk]}, follow=True)
    assert "Revoked 1 API key" in response.content.decode()


def delete_key(key, client):
    key.delete()


def deactivate_owner(key, client):
    key.user.is_active = False
    key.user.save()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("revoke", [revoke_with_service, untick_is_active_in_admin, revoke_action_in_admin,
                                    delete_key, deactivate_owner])
def test_a_revoked_key_is_refused_by_every_process_on_the_next_request(two_servers, fake_upstream, client,
                                                                       revoke):
    first, second = two_servers
    key, raw = make_api_key()
    for server in (first, second):  # both processes now remember the key as valid
        assert chat(server, raw).status_code == 200
    # A change that bypasses the model layer (no save signal) is not seen: the processes
    # really answer from memory, so what follows is the key version at work, not a fresh read.
    ApiKey.objects.filter(pk=key.pk).update(name="renamed behind the processes' back")
    assert chat(second, raw).status_code == 200

    client.force_login(LLMStaffFactory())
    revoke(key, client)  # in this process: neither server was told directly

    assert_unauthenticated(chat(second, raw))
    assert_unauthenticated(chat(first, raw, stream=True))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{first.url}/v1", api_key=raw, max_retries=0).models.list()


@pytest.mark.django_db(transaction=True)
def test_other_keys_keep_working_after_a_revocation(two_servers, fake_upstream):
    first, second = two_servers
    kept, kept_raw = make_api_key(name="kept")
    revoked, revoked_raw = make_api_key(name="revoked")
    for raw in (kept_raw, revoked_raw):
        assert chat(first, raw).status_code == 200
    api_key_revoke(api_key=revoked)
    assert_unauthenticated(chat(first, revoked_raw))
    assert chat(first, kept_raw).status_code == 200 and chat(second, kept_raw).status_code == 200


def ratelimit_headers(response: httpx.Response) -> tuple:
    return (response.headers.get("x-ratelimit-limit-requests"), response.headers.get("x-ratelimit-remaining-requests"))


@pytest.mark.django_db(transaction=True)
def test_a_key_over_its_requests_per_minute_gets_429_with_retry_after(limited_server, fake_upstream):
    key, raw = api_key_create(name="two a minute", user=LLMUserFactory(), requests_per_minute=2)
    first, second = chat(limited_server, raw), chat(limited_server, raw, stream=True)
    assert first.status_code == second.status_code == 200
    assert ratelimit_headers(first) == ("2", "1") and ratelimit_headers(second) == ("2", "0")
    assert re.fullmatch(r"[\d.]+m?s|\dm\d+s", first.headers["x-ratelimit-reset-requests"])
    calls = fake_upstream.calls()

    refused = chat(limited_server, raw, cache=False)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "2 requests per minute" in error["message"]
    assert error["details"]["limit_requests"] == 2 and error["request_id"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 30  # one request every 30 s
    assert error["details"]["retry_after"] == int(refused.headers["Retry-After"])
    assert ratelimit_headers(refused) == ("2", "0")
    assert fake_upstream.calls() == calls  # refused before any upstream call
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=f"{limited_server.url}/v1", api_key=raw, max_retries=0).chat.completions.create(
            model="chat", messages=MESSAGES)
    # Listing models does not use up the limit and still works.
    assert httpx.get(f"{limited_server.url}/v1/models", headers={"Authorization": f"Bearer {raw}"}).status_code == 200

    metrics = httpx.get(f"{limited_server.url}/metrics").text
    assert re.search(r"^quire_llm_rate_limited_total [1-9]", metrics, re.M)


@pytest.mark.django_db(transaction=True)
def test_the_limit_is_per_key_and_defaults_to_the_setting(limited_server, fake_upstream):
    owner = LLMUserFactory()
    busy, busy_raw = api_key_create(name="busy", user=owner, requests_per_minute=1)
    other, other_raw = api_key_create(name="other", user=owner, requests_per_minute=1)  # same user, own limit
    default, default_raw = make_api_key(user=owner)  # LLM_API_KEY_DEFAULT_RPM=3 on this server
    assert chat(limited_server, busy_raw).status_code == 200
    assert chat(limited_server, busy_raw).status_code == 429
    assert chat(limited_server, other_raw).status_code == 200  # unaffected by "busy"
    statuses = [chat(limited_server, default_raw).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


@pytest.mark.django_db(transaction=True)
def test_unlimited_keys_are_never_limited(limited_server, fake_upstream):
    key, raw = api_key_create(name="unlimited", user=LLMUserFactory(), requests_per_minute=0)  # overrides the default
    responses = [chat(limited_server, raw) for _ in range(25)]
    assert {r.status_code for r in responses} == {200}
    assert "x-ratelimit-limit-requests" not in responses[-1].headers


@pytest.mark.django_db(transaction=True)
def test_without_a_default_keys_have_no_limit(settings):
    settings.LLM_API_KEY_DEFAULT_RPM = None
    _, raw = make_api_key()

    async def admit_many():
        return [await aapi_key_admit(raw) for _ in range(200)]

    admissions = run(admit_many)
    assert all(a.key is not None and not a.limited and a.limit is None for a in admissions)


@pytest.mark.django_db(transaction=True)
def test_a_changed_limit_applies_at_once(limited_server, fake_upstream, client):
    key, raw = api_key_create(name="raised", user=LLMUserFactory(), requests_per_minute=1)
    assert chat(limited_server, raw).status_code == 200
    assert chat(limited_server, raw).status_code == 429
    client.force_login(LLMStaffFactory())
    response = client.post(reverse("admin:llm_apikey_change", args=[key.pk]),
                           {"name": key.name, "user": key.user_id, "monthly_budget_usd": "",
                            "requests_per_minute": "100", "is_active": "on"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.requests_per_minute == 100
    response = chat(limited_server, raw)
    assert response.status_code == 200 and response.headers["x-ratelimit-limit-requests"] == "100"


@pytest.mark.django_db(transaction=True)
def test_the_cache_read_in_the_key_check_serves_only_the_same_owner(limited_server, fake_upstream):
    owner = LLMUserFactory()
    first_raw, second_raw = (api_key_create(name=n, user=owner, requests_per_minute=0)[1] for n in ("a", "b"))
    stranger_raw = api_key_create(name="c", user=LLMUserFactory(), requests_per_minute=0)[1]
    answer = chat(limited_server, first_raw).json()["choices"][0]["message"]["content"]
    again = chat(limited_server, second_raw)  # another key of the same owner: a cache hit
    assert again.json()["choices"][0]["message"]["content"] == answer and fake_upstream.calls() == 1
    assert chat(limited_server, stranger_raw).status_code == 200
    assert fake_upstream.calls() == 2  # another owner's cached answer is never served


@pytest.mark.django_db(transaction=True)
def test_a_limit_allows_a_burst_of_its_size_then_refuses():
    _, raw = api_key_create(name="seven", user=LLMUserFactory(), requests_per_minute=7)

    async def admit_many():
        return [await aapi_key_admit(raw) for _ in range(9)]

    admissions = run(admit_many)
    assert [a.remaining for a in admissions[:7]] == [6, 5, 4, 3, 2, 1, 0]
    assert [a.limited for a in admissions] == [False] * 7 + [True, True]
    assert 8 <= admissions[7].retry_after <= 60 / 7 + 0.01  # the next slot frees up after 60/7 s


@pytest.mark.django_db(transaction=True)
def test_without_redis_keys_are_still_checked_against_the_database(redis_server, settings):
    settings.REDIS_URL = redis_server.url
    redis_server.stop()
    key, raw = api_key_create(name="limited", user=LLMUserFactory(), requests_per_minute=1)

    async def admit_many(raw_key):
        return [await aapi_key_admit(raw_key) for _ in range(3)]

    # Fail open on the limit (as budgets and breakers do), never on the key itself.
    assert all(a.key == key and not a.limited for a in run(admit_many, raw))
    api_key_revoke(api_key=key)
    assert all(a.key is None for a in run(admit_many, raw))  # no remembered key here (cache TTL 0 in tests)


@pytest.mark.django_db(transaction=True)
def test_tokens_spent_fill_a_key_bucket_that_refuses_past_a_minute_worth():
    from apps.llm import keys, runtime

    key, raw = api_key_create(name="tokens", user=LLMUserFactory(), requests_per_minute=0, tokens_per_minute=600)
    unlimited, _ = api_key_create(name="no token limit", user=LLMUserFactory(), requests_per_minute=0)

    async def spend(api_key, tokens):
        async with runtime.aredis().pipeline(transaction=False) as pipe:
            keys.spend_tokens_command(pipe, api_key, tokens)
            await pipe.execute()

    async def scenario():
        fresh = await aapi_key_admit(raw)
        await spend(key, 450)
        after_450 = await aapi_key_admit(raw)
        await spend(key, 300)  # the call admitted last may go over: 750 of 600
        over = await aapi_key_admit(raw)
        await spend(unlimited, 10_000)  # a key without a token limit spends nothing
        untouched = await runtime.aredis().keys(keys.token_key(unlimited.pk, "*"))
        return fresh, after_450, over, untouched

    fresh, after_450, over, untouched = run(scenario)
    assert (fresh.token_limit, fresh.tokens_remaining, fresh.limited) == (600, 600, False)
    assert 150 <= after_450.tokens_remaining <= 152 and not after_450.limited  # refills 10 a second
    assert over.limited and over.limited_by == "tokens" and over.limit is None
    assert 14 <= over.retry_after <= 15.01  # 150 tokens over, at 10 a second
    assert untouched == []


def embed(server, raw_key: str, texts) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json={"model": "default", "input": texts},
                      headers={"Authorization": f"Bearer {raw_key}"}, timeout=20)


@pytest.mark.django_db(transaction=True)
def test_a_key_over_its_tokens_per_minute_gets_429_naming_the_token_limit(limited_server, fake_upstream):
    from apps.llm import keys, runtime

    key, raw = api_key_create(name="thirty tokens", user=LLMUserFactory(), requests_per_minute=0,
                              tokens_per_minute=30)
    first = chat(limited_server, raw)
    assert first.status_code == 200
    assert (first.headers["x-ratelimit-limit-tokens"], first.headers["x-ratelimit-remaining-tokens"]) == ("30", "30")
    assert "x-ratelimit-limit-requests" not in first.headers  # no request limit on this key
    spent_on_chat = first.json()["usage"]["total_tokens"]
    embedded = embed(limited_server, raw, ["word " * 40])  # admitted with tokens left, goes over
    assert embedded.status_code == 200 and embedded.json()["usage"]["total_tokens"] == 40

    bucket = runtime.sync_redis()

    def seconds_spent_ahead() -> float:
        """How far ahead of Redis's clock the key's spending reaches (a minute's worth = 60 s)."""
        seconds, micros = bucket.time()
        return (float(bucket.get(keys.token_key(key.pk, 30)) or 0) - seconds * 1e6 - micros) / 1e6

    deadline = time.monotonic() + 5
    while seconds_spent_ahead() <= 60 and time.monotonic() < deadline:  # it lands just after each response
        time.sleep(0.02)
    assert seconds_spent_ahead() == pytest.approx((spent_on_chat + 40) * 2, abs=2)  # 2 s a token at 30 a minute
    calls = fake_upstream.calls()
    refused = chat(limited_server, raw, cache=False)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "30 tokens per minute" in error["message"]
    assert error["details"]["limit"] == "api_key_tokens_per_minute" and error["details"]["limit_tokens"] == 30
    assert 1 <= int(refused.headers["Retry-After"]) <= 120
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert embed(limited_server, raw, ["one"]).status_code == 429  # every /v1/ call of the key
    assert fake_upstream.calls() == calls  # refused before any upstream call
