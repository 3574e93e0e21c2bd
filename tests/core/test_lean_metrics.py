"""The lean ASGI handlers (the LLM proxy's /v1/, the chat streams) keep django-prometheus's
request metrics, kept on the event loop: the same django_http_* families the pages and the API
feed, so one dashboard sees every request."""

import httpx
import pytest
from prometheus_client import REGISTRY

from apps.llm.asgi import ProxyASGIHandler
from apps.llm.testing import run
from tests.factories.llm import make_api_key

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict:
    return {
        "models_401": sample("django_http_responses_total_by_status_view_method_total",
                             status="401", view="llm-models", method="GET"),
        "stream_403": sample("django_http_responses_total_by_status_view_method_total",
                             status="403", view="chat:messages", method="POST"),
        "completions_200": sample("django_http_responses_total_by_status_view_method_total",
                                  status="200", view="llm-chat-completions", method="POST"),
        "streaming": sample("django_http_responses_streaming_total"),
        "post": sample("django_http_requests_total_by_method_total", method="POST"),
        "latency_models": sample("django_http_requests_latency_seconds_by_view_method_count",
                                 view="llm-models", method="GET"),
        "by_view": sample("django_http_requests_total_by_view_transport_method_total",
                          view="llm-models", transport="http", method="GET"),
        "before": sample("django_http_requests_before_middlewares_total"),
        "after": sample("django_http_responses_before_middlewares_total"),
    }


async def _calls(raw_key: str) -> list[int]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ProxyASGIHandler()),
                                 base_url="http://testserver") as client:
        statuses = [(await client.get("/v1/models")).status_code,  # no key
                    (await client.post("/chat/999999/messages", json={"question": "hi"})).status_code]
        async with client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {raw_key}"},
                                 json={"model": "chat", "stream": True,
                                       "messages": [{"role": "user", "content": "Hello"}]}) as response:
            await response.aread()
            statuses.append(response.status_code)
        return statuses


def test_lean_requests_are_counted_by_status_view_and_method():
    _, raw = make_api_key()
    before = snapshot()
    assert run(_calls, raw) == [401, 403, 200]  # the page stream refuses a POST without CSRF
    after = snapshot()
    grew = {name: after[name] - before[name] for name in before}
    assert grew == {"models_401": 1, "stream_403": 1, "completions_200": 1, "streaming": 1, "post": 2,
                    "latency_models": 1, "by_view": 1, "before": 3, "after": 3}
