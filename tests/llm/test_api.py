"""The OpenAI-compatible endpoint, proven with the official ``openai`` client
against a real uvicorn server (a subprocess on the test database) whose
provider is the fake upstream."""

import json
import time
from decimal import Decimal

import httpx
import openai
import pytest
from django.test import AsyncClient

from apps.llm.models import UsageRecord
from apps.llm.testing import EXTRACTIVE, flush_ledger_until, run
from tests.factories.llm import make_api_key
from tests.llm.conftest import start_proxy_server


@pytest.fixture
def proxy_server(fake_upstream, django_db_blocker):
    server = start_proxy_server(fake_upstream)
    yield server
    server.stop()


def client_for(server, raw_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=raw_key, max_retries=0, timeout=20)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


@pytest.mark.django_db(transaction=True)
def test_openai_client_streams_from_chat_completions(proxy_server):
    key, raw = make_api_key()
    proxy_server.upstream.configure(text="Hello from the proxy, streamed.")
    stream = client_for(proxy_server, raw).chat.completions.create(
        model="chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "Hello from the proxy, streamed."
    assert len(pieces) == 5  # token by token, not buffered
    assert usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert proxy_server.upstream.requests[-1]["body"]["model"] == "gpt-4o-mini"
    assert flush_ledger_until(1) == 1
    row = UsageRecord.objects.get()
    assert (row.api_key_id, row.user_id, row.provider, row.outcome) == (key.pk, key.user_id, "openai", "ok")
    assert row.cost_usd > 0


@pytest.mark.django_db(transaction=True)
def test_openai_client_non_streaming_models_and_cache(proxy_server):
    _, raw = make_api_key()
    client = client_for(proxy_server, raw)
    assert {m.id for m in client.models.list()} == {"chat", "enrich", "testing/hashed-bag-of-words"}
    first = client.chat.completions.create(model="chat", messages=MESSAGES)
    assert first.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    assert first.usage.completion_tokens == 8
    second = client.chat.completions.create(model="chat", messages=MESSAGES)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert proxy_server.upstream.calls() == 1  # served from the cache
    client.chat.completions.create(model="chat", messages=MESSAGES, extra_body={"cache": False})
    assert proxy_server.upstream.calls() == 2


@pytest.mark.django_db(transaction=True)
def test_errors_use_the_envelope(proxy_server):
    _, raw = make_api_key()
    with pytest.raises(openai.AuthenticationError):
        client_for(proxy_server, "qk_wrong").chat.completions.create(model="chat", messages=MESSAGES)
    url = f"{proxy_server.url}/v1/chat/completions"
    response = httpx.post(url, json={"model": "chat", "messages": MESSAGES})
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
    headers = {"Authorization": f"Bearer {raw}"}
    response = httpx.post(url, json={"model": "gpt-9", "messages": MESSAGES}, headers=headers)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = httpx.post(url, content=b"{not json", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "validation_error"
    response = httpx.post(url, json={"model": "chat", "messages": [{"role": "wizard", "content": "x"}]},
                          headers=headers)
    assert response.status_code == 400 and "role" in response.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_exhausted_api_key_budget_is_a_429_envelope(proxy_server):
    _, raw = make_api_key(monthly_budget_usd=Decimal("0.0001"))
    proxy_server.upstream.configure(tokens=200)  # 200 x $0.60/1M = $0.00012: one call spends it all
    client = client_for(proxy_server, raw)
    client.chat.completions.create(model="chat", messages=MESSAGES, extra_body={"cache": False})  # overrun by one
    calls = proxy_server.upstream.calls()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=MESSAGES, stream=True, extra_body={"cache": False})
    response = httpx.post(f"{proxy_server.url}/v1/chat/completions", json={"model": "chat", "messages": MESSAGES},
                          headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["details"]["budget"] == "api_key"
    assert error["details"]["limit_usd"] == "0.0001" and int(response.headers["Retry-After"]) > 0
    assert proxy_server.upstream.calls() == calls  # refused before any upstream call


@pytest.mark.django_db(transaction=True)
def test_a_failure_mid_stream_reaches_the_openai_client_as_an_error(proxy_server):
    _, raw = make_api_key()
    proxy_server.upstream.configure(fail="drop", fail_at=2)
    stream = client_for(proxy_server, raw).chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="interrupted"):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["tok0 ", "tok1 "]
    assert flush_ledger_until(1) == 1
    assert UsageRecord.objects.get().outcome == "partial"


def test_endpoint_is_in_the_openapi_schema(tmp_path):
    from django.core.management import call_command

    out = tmp_path / "schema.json"
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", "--file", str(out))
    paths = json.loads(out.read_text())["paths"]
    assert "429" in paths["/v1/chat/completions"]["post"]["responses"]
    assert "get" in paths["/v1/models"]


@pytest.mark.django_db(transaction=True)
def test_a_client_that_goes_away_cancels_the_upstream_call(proxy_server):
    _, raw = make_api_key()
    upstream = proxy_server.upstream
    upstream.configure(tokens=500, token_delay=0.02)
    with httpx.stream("POST", f"{proxy_server.url}/v1/chat/completions",
                      json={"model": "chat", "messages": MESSAGES, "stream": True},
                      headers={"Authorization": f"Bearer {raw}"}) as response:
        lines = response.iter_lines()
        while "tok2" not in next(lines):
            pass
    left = time.monotonic()
    while not upstream.disconnects and time.monotonic() - left < 3:
        time.sleep(0.01)
    assert upstream.disconnects and upstream.disconnects[0] - left < 1.0
    assert flush_ledger_until(1) == 1
    row = UsageRecord.objects.get()
    assert row.outcome == "cancelled" and 3 <= row.completion_tokens < 500


@pytest.mark.django_db(transaction=True)
def test_malformed_bodies_are_400_validation_errors(settings):
    """In-process: each body below was a 500, sent upstream as it was (stop, temperature) or read
    loosely (a string "false" as stream: true)."""
    settings.LLM_PROVIDERS = {"extractive": EXTRACTIVE}
    settings.LLM_ROUTES = {"chat": {"providers": ["extractive"], "max_tokens": 50, "context_window": 4096}}
    _, raw = make_api_key()
    user = [{"role": "user", "content": "hi"}]
    bodies = {
        '{"model": "chat", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}": "The body is not valid JSON.",
        **{json.dumps(body): message for body, message in [
            ({"model": "chat", "messages": [{"role": ["user"], "content": "hi"}]},
             "messages[0]: role must be one of ['assistant', 'developer', 'system', 'tool', 'user']."),
            ({"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
             "messages[0]: the text of a content part must be a string."),
            ({"model": "chat", "messages": [*user, {"role": "user", "content": "why\ud800?"}]},
             "messages[1]: content holds a lone surrogate (not Unicode text)."),
            ({"model": "chat", "messages": user, "stop": ["end", 7]}, "stop: a string or a list of strings."),
            ({"model": "chat", "messages": user, "temperature": float("nan")}, "temperature: wrong type."),
            ({"model": "chat", "messages": user, "stream": "false"}, "stream: true or false."),  # was streamed
            ({"model": "chat", "messages": user, "cache": 0}, "cache: true or false."),
            ({"model": "chat", "messages": user, "stream_options": {"include_usage": "no"}},
             "stream_options: an object whose include_usage is true or false."),
            ({"model": "chat", "messages": user, "stream_options": []},
             "stream_options: an object whose include_usage is true or false."),
        ]},
    }

    async def post_all():
        client = AsyncClient()
        return [await client.post("/v1/chat/completions", body, content_type="application/json",
                                  headers={"authorization": f"Bearer {raw}"}) for body in bodies]

    for response, message in zip(run(post_all), bodies.values(), strict=True):
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert (error["code"], error["message"]) == ("validation_error", message)


@pytest.mark.django_db
def test_a_method_the_endpoint_does_not_serve_is_a_405_naming_the_allowed_one():
    async def send():
        client = AsyncClient()
        return (await client.get("/v1/chat/completions"), await client.post("/v1/models"),
                await client.generic("TRACE", "/v1/models"))

    for response, allowed in zip(run(send), ("POST", "GET", "GET"), strict=True):
        assert response.status_code == 405
        assert response["Allow"] == allowed  # RFC 9110: a 405 lists what is allowed
        assert response.json()["error"]["code"] == "method_not_allowed"
