"""The lean ASGI handlers (the LLM proxy's /v1/, the chat streams) keep Django's security
middleware: HTTPS redirect, HSTS and the security headers, run on the event loop."""

import httpx
import pytest
from django.test import override_settings

from apps.chat.asgi import CHAT_STREAM_PATH
from apps.llm.asgi import ProxyASGIHandler
from apps.llm.testing import run

pytestmark = pytest.mark.django_db(transaction=True)


async def _call(handler, method: str, url: str, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=handler)) as client:
        return await client.request(method, url, **kwargs)


@pytest.mark.parametrize("path", ["/v1/models", "/chat/1/messages", "/api/v1/chat/conversations/1/messages"])
def test_plain_http_is_redirected_to_https_when_the_site_asks_for_it(path):
    with override_settings(SECURE_SSL_REDIRECT=True, ALLOWED_HOSTS=["quire.example"]):
        handler = ProxyASGIHandler()  # middleware reads its settings when the handler is built
        response = run(_call, handler, "POST", f"http://quire.example{path}", json={"question": "hi"})
    assert response.status_code == 301 and response.headers["location"] == f"https://quire.example{path}"


def test_lean_responses_carry_the_security_headers():
    with override_settings(SECURE_HSTS_SECONDS=3600, SECURE_CONTENT_TYPE_NOSNIFF=True, ALLOWED_HOSTS=["quire.example"],
                           SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        handler = ProxyASGIHandler()
        response = run(_call, handler, "GET", "https://quire.example/v1/models",
                       headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 401  # no API key: the envelope, with the headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"] == "max-age=3600"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-request-id"]


def test_both_chat_streams_take_the_lean_path():
    assert CHAT_STREAM_PATH.match("/chat/12/messages") and CHAT_STREAM_PATH.match("/api/v1/chat/conversations/12/messages")
    assert not CHAT_STREAM_PATH.match("/api/v1/chat/conversations/12") and not CHAT_STREAM_PATH.match("/chat/12/")
