from decimal import Decimal

import pytest
from django.conf import settings as django_settings

from apps.llm import runtime
from apps.llm.testing import EXTRACTIVE, openai_provider
from tests.chat.sse_client import AppServer
from tests.conftest import child_env, free_port

PRICES = {"fake-model": {"input": Decimal("2.50"), "output": Decimal("10.00")}}


def _clear_redis():
    client = runtime.sync_redis()
    prefix = django_settings.CACHES["default"].get("KEY_PREFIX", "quire")
    for pattern in (runtime.key("*"), f"{prefix}:chat:*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)


@pytest.fixture(autouse=True)
def clean_chat_redis():
    """Rate-limit windows, the LLM cache, breakers and budgets start empty in every test."""
    _clear_redis()
    yield


@pytest.fixture
def llm(settings, fake_upstream):
    """Route "chat": the fake OpenAI-compatible upstream, then the extractive backend."""
    settings.LLM_PROVIDERS = {"fake": openai_provider(fake_upstream, model="fake-model"), "extractive": EXTRACTIVE}
    settings.LLM_ROUTES = {**settings.LLM_ROUTES, "chat": {"providers": ["fake", "extractive"], "max_tokens": 200,
                                                          "context_window": 4096}}
    settings.LLM_PRICES = PRICES
    return fake_upstream


@pytest.fixture
def no_llm(settings):
    settings.LLM_PROVIDERS = {"extractive": EXTRACTIVE}
    settings.LLM_ROUTES = {**settings.LLM_ROUTES, "chat": {"providers": ["extractive"], "max_tokens": 200,
                                                          "context_window": 4096}}


@pytest.fixture(scope="module")
def app_server(django_db_setup, django_db_blocker, _fake_upstream_server):
    """One uvicorn worker serving the whole site (ASGI), its chat route pointed at the fake upstream."""
    with django_db_blocker.unblock():
        env = child_env(LLM_OPENAI_BASE_URL=_fake_upstream_server.url, LLM_OPENAI_API_KEY="test-key",
                        LLM_OPENAI_MODEL="gpt-4o-mini", CHAT_ANON_QUESTIONS_PER_MINUTE="100")
    server = AppServer(free_port(), env).start()
    yield server
    server.stop()
