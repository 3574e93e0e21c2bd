"""``POST /v1/embeddings``: Quire's own embedding model behind the gateway's keys, limits,
budgets and ledger, proven with the official ``openai`` client against a real uvicorn server
(the testing backend's vectors) and, in-process, against the fake upstream over HTTP (an
OpenAI-compatible embedding backend)."""

import base64
import struct
from decimal import Decimal

import httpx
import openai
import pytest
from django.test import AsyncClient
from prometheus_client import REGISTRY

from apps.llm.embeddings import get_embedding_backend, reset_embedding_backends
from apps.llm.embeddings.testing import DeterministicBackend, fail_embeddings, recorded_calls
from apps.llm.exceptions import ContextWindowExceeded
from apps.llm.models import UsageRecord
from apps.llm.services import EMBEDDING_SLICE_TOKENS, aembed, api_key_create
from apps.llm.testing import flush_ledger_until, run
from apps.llm.testing.fake_upstream import deterministic_vector
from tests.factories.llm import LLMUserFactory, make_api_key
from tests.llm.conftest import start_proxy_server

MODEL = "testing/hashed-bag-of-words"  # the testing backend's model id (config/settings/test.py)
TEXTS = ["Glaciers carve deep valleys.", "Tides shape the coast twice a day."]


@pytest.fixture
def proxy_server(fake_upstream, django_db_blocker):
    server = start_proxy_server(fake_upstream)
    yield server
    server.stop()


@pytest.fixture
def embedding_failures():
    yield fail_embeddings
    fail_embeddings(False)


def expected(text: str) -> list[float]:
    return DeterministicBackend().vector(text)


def post(server, raw_key: str | None, body=None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {raw_key}"} if raw_key else {}
    return httpx.post(f"{server.url}/v1/embeddings", json=body, headers=headers, timeout=20, **kwargs)


@pytest.mark.django_db(transaction=True)
def test_openai_client_embeds_through_the_gateway(proxy_server):
    key, raw = make_api_key()
    client = openai.OpenAI(base_url=f"{proxy_server.url}/v1", api_key=raw, max_retries=0, timeout=20)
    assert MODEL in {m.id for m in client.models.list()}
    before = recorded_calls()

    result = client.embeddings.create(model=MODEL, input=TEXTS)  # the SDK asks for base64 and decodes it

    assert [item.index for item in result.data] == [0, 1]
    for item, text in zip(result.data, TEXTS, strict=True):
        assert item.embedding == pytest.approx(expected(text), abs=1e-7)  # float32 on the wire
    tokens = sum(get_embedding_backend().count_tokens_batch(TEXTS))
    assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    assert result.model == MODEL
    assert recorded_calls()["texts"] - before["texts"] == 2
    # The alias names the same model.
    assert client.embeddings.create(model="default", input="Tides").data[0].embedding == pytest.approx(
        expected("Tides"), abs=1e-7)

    assert flush_ledger_until(2) == 2
    row = UsageRecord.objects.get(prompt_tokens=tokens)
    assert (row.route, row.provider, row.model, row.outcome) == ("embeddings", "testing", MODEL, "ok")
    assert (row.api_key_id, row.user_id, row.completion_tokens, row.streamed) == (key.pk, key.user_id, 0, False)
    assert row.tokens_estimated is False and row.cost_usd == 0  # the model is not in LLM_PRICES


@pytest.mark.django_db(transaction=True)
def test_float_format_input_types_and_headers(proxy_server):
    _, raw = make_api_key()
    response = post(proxy_server, raw, {"model": MODEL, "input": TEXTS[0], "encoding_format": "float"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    assert body["data"][0]["embedding"] == pytest.approx(expected(TEXTS[0]), abs=1e-12)
    assert response.headers["X-Quire-Provider"] == "testing" and response.headers["X-Quire-Usage-Record"]

    as_query = post(proxy_server, raw, {"model": MODEL, "input": TEXTS[0], "input_type": "query",
                                        "encoding_format": "base64", "dimensions": 384, "user": "end-user-7"})
    assert as_query.status_code == 200
    packed = base64.b64decode(as_query.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(expected(TEXTS[0]), abs=1e-7)


@pytest.mark.django_db(transaction=True)
def test_a_large_request_is_embedded_in_slices(proxy_server):
    """Between slices the model is free for a chat question's vector in the same process."""
    _, raw = make_api_key()
    before = recorded_calls()
    per_text = EMBEDDING_SLICE_TOKENS // 2 - 10  # two texts per slice
    texts = ["river " * (per_text - 1) + f"n{i}" for i in range(5)]
    assert get_embedding_backend().count_tokens_batch(texts) == [per_text] * 5
    response = post(proxy_server, raw, {"model": MODEL, "input": texts})
    assert response.status_code == 200
    assert [item["index"] for item in response.json()["data"]] == list(range(len(texts)))
    assert response.json()["data"][-1]["embedding"] == pytest.approx(expected(texts[-1]), abs=1e-12)
    after = recorded_calls()
    assert (after["calls"] - before["calls"], after["texts"] - before["texts"]) == (3, 5)  # 2 + 2 + 1


@pytest.mark.django_db(transaction=True)
def test_bad_requests_are_envelopes_naming_what_is_wrong_and_embed_nothing(proxy_server, settings):
    _, raw = make_api_key()
    before = recorded_calls()
    too_many = ["x"] * (settings.LLM_API_EMBEDDING_MAX_INPUTS + 1)
    cases = [
        ({"input": "x"}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": ["fine", 7]}, "input[1]: token arrays"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, "input[0]: token arrays"),
        ({"model": MODEL, "input": ["fine", None]}, "input[1]: a string"),
        ({"model": MODEL, "input": ["fine", ""]}, "input[1]: an empty string"),
        ({"model": MODEL, "input": too_many}, f"at most {settings.LLM_API_EMBEDDING_MAX_INPUTS}"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "input_type": "passage"}, "input_type"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": True}, "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 256}, "384-dimensional vectors only"),
        ({"model": MODEL, "input": "x", "user": 5}, "user"),
        ([MODEL, "x"], "JSON object"),
    ]
    for body, words in cases:
        response = post(proxy_server, raw, body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and words in error["message"], (body, error)

    too_long = post(proxy_server, raw, {"model": MODEL, "input": ["short", "word " * 300]})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_window_exceeded"
    assert "input[1] has 300 tokens" in too_long.json()["error"]["message"]

    unknown = post(proxy_server, raw, {"model": "text-embedding-3-large", "input": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    chat_route = post(proxy_server, raw, {"model": "chat", "input": "x"})  # a chat route is not an embedding model
    assert chat_route.status_code == 404
    assert post(proxy_server, None, {"model": MODEL, "input": "x"}).status_code == 401
    wrong_method = httpx.get(f"{proxy_server.url}/v1/embeddings", headers={"Authorization": f"Bearer {raw}"})
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"

    assert recorded_calls() == before
    assert flush_ledger_until(0, timeout=0) == 0


@pytest.mark.django_db(transaction=True)
def test_limits_budgets_and_failures(proxy_server, embedding_failures):
    user = LLMUserFactory()
    _, limited = api_key_create(name="one a minute", user=user, requests_per_minute=1)
    assert post(proxy_server, limited, {"model": MODEL, "input": "x"}).status_code == 200
    refused = post(proxy_server, limited, {"model": MODEL, "input": "x"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["Retry-After"]) > 0

    _, spent = make_api_key(monthly_budget_usd=Decimal("0"))
    before = recorded_calls()
    response = post(proxy_server, spent, {"model": MODEL, "input": "x"})
    assert response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"
    assert recorded_calls() == before  # refused before the model

    _, raw = make_api_key()
    embedding_failures(True)
    failed = post(proxy_server, raw, {"model": MODEL, "input": "x"})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "embedding_error"
    assert flush_ledger_until(2) == 2
    assert UsageRecord.objects.filter(route="embeddings", outcome="error").count() == 1


@pytest.mark.django_db(transaction=True)
def test_priced_calls_are_charged_counted_and_refused_when_too_long(settings):
    settings.LLM_PRICES = {**settings.LLM_PRICES, MODEL: {"input": Decimal("20"), "output": Decimal("0")}}
    key, _ = make_api_key()
    sample = {"route": "embeddings", "provider": "testing", "outcome": "ok"}
    calls_before = REGISTRY.get_sample_value("quire_llm_requests_total", sample) or 0

    result = run(aembed, alias="default", texts=TEXTS, user=key.user, api_key=key)

    assert result.prompt_tokens == sum(get_embedding_backend().count_tokens_batch(TEXTS))
    assert result.cost == Decimal(20) * result.prompt_tokens / 1_000_000
    assert REGISTRY.get_sample_value("quire_llm_requests_total", sample) == calls_before + 1
    assert flush_ledger_until(1) == 1
    assert UsageRecord.objects.get(pk=result.usage_record_id).cost_usd == result.cost
    with pytest.raises(ContextWindowExceeded, match=r"input\[0\] has 255 tokens"):
        run(aembed, alias="default", texts=["w " * 255], user=key.user, api_key=key)


@pytest.mark.django_db(transaction=True)
def test_an_openai_compatible_embedding_backend_is_served_over_http(settings, fake_upstream):
    """The gateway in front of a remote embedding service: the texts go to it over HTTP, its
    vectors come back, the ledger names the provider."""
    settings.EMBEDDING_BACKENDS = {**settings.EMBEDDING_BACKENDS, "remote": {
        "BACKEND": "apps.llm.embeddings.openai_http.OpenAIHTTPBackend",
        "OPTIONS": {"BASE_URL": fake_upstream.url, "MODEL": "fake-embedding", "DIMENSIONS": 384,
                    "MAX_TOKENS": 512, "MAX_RETRIES": 0}}}
    settings.LLM_API_EMBEDDING_ALIASES = ["default", "remote"]
    reset_embedding_backends()
    try:
        _, raw = make_api_key()
        response = run(AsyncClient().post, "/v1/embeddings", {"model": "fake-embedding", "input": TEXTS},
                       content_type="application/json", headers={"authorization": f"Bearer {raw}"})
        assert response.status_code == 200, response.content
        vectors = [item["embedding"] for item in response.json()["data"]]
        assert vectors == [pytest.approx(deterministic_vector(text), abs=1e-7) for text in TEXTS]
        assert fake_upstream.requests[-1]["body"]["input"] == TEXTS
        assert response.headers["X-Quire-Provider"] == "openai"
        assert flush_ledger_until(1) == 1
        row = UsageRecord.objects.get()
        assert (row.provider, row.model, row.tokens_estimated) == ("openai", "fake-embedding", True)
    finally:
        reset_embedding_backends()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/chat/completions"])
def test_a_body_over_the_upload_limit_is_a_documented_413(settings, client, path):
    from apps.llm.asgi import ProxyASGIHandler

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    _, raw = make_api_key()

    async def send():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ProxyASGIHandler()),
                                     base_url="http://testserver") as client:
            return await client.post(path, headers={"Authorization": f"Bearer {raw}"},
                                     json={"model": MODEL, "input": "x" * 2000,
                                           "messages": [{"role": "user", "content": "hi"}]})

    response = run(send)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["paths"][path]["post"]["responses"]["413"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"}
