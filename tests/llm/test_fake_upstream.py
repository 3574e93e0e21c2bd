"""The fake upstream is a real HTTP server other engineers test against."""

import base64
import math
import struct

import httpx
import pytest

from apps.llm.services import ChatRequest
from apps.llm.testing import collect, run
from tests.llm.conftest import question


def test_embeddings_are_deterministic_unit_vectors(fake_upstream):
    response = httpx.post(f"{fake_upstream.url}/embeddings", json={"model": "m", "input": ["alpha", "beta"]})
    assert response.status_code == 200
    first, second = (item["embedding"] for item in response.json()["data"])
    assert len(first) == 384 and first != second
    assert math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-9)
    again = httpx.post(f"{fake_upstream.url}/embeddings", json={"input": "alpha", "dimensions": 384}).json()
    assert again["data"][0]["embedding"] == first
    assert fake_upstream.calls("/v1/embeddings") == 2
    # encoding_format base64 (OpenAI's SDK default): the same vector as little-endian float32 bytes.
    packed = httpx.post(f"{fake_upstream.url}/embeddings", json={"input": "alpha", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(first, abs=1e-7)


def test_failures_can_be_ordered_over_http(fake_upstream):
    base = fake_upstream.root_url
    httpx.post(f"{base}/_fake/config", json={"fail": "429", "retry_after": "7", "fail_count": 1})
    limited = httpx.post(f"{fake_upstream.url}/chat/completions", json={"messages": []})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert httpx.post(f"{fake_upstream.url}/chat/completions", json={"messages": []}).status_code == 200
    stats = httpx.get(f"{base}/_fake/stats").json()
    assert stats["counts"]["/v1/chat/completions"] == 2
    assert httpx.get(f"{fake_upstream.url}/models").json()["data"][0]["id"] == "fake-model"


@pytest.mark.django_db
def test_proxy_metrics_are_exposed(proxy, client):
    run(collect, ChatRequest(route="chat", messages=question()))
    run(collect, ChatRequest(route="chat", messages=question()))
    page = client.get("/metrics").content.decode()
    assert 'quire_llm_requests_total{outcome="ok",provider="primary",route="chat"}' in page
    assert 'quire_llm_cache_total{result="hit",route="chat"}' in page
    assert "quire_llm_ttft_seconds_bucket" in page and "quire_llm_cost_usd_total" in page
    assert 'quire_llm_breaker_state{provider="primary"} 0.0' in page
