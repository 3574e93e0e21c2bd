import subprocess
import sys
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.conf import settings as django_settings

from apps.llm.testing import EXTRACTIVE, anthropic_provider, openai_provider, reset_proxy_state
from apps.llm.testing.fake_upstream import FakeUpstream

PRICES = {
    "fake-model": {"input": Decimal("2.50"), "output": Decimal("10.00")},
    "fake-claude": {"input": Decimal("3.00"), "output": Decimal("15.00")},
}


@pytest.fixture(autouse=True)
def clean_llm_redis():
    """Breakers, cache, spend and the ledger queue start empty in every test."""
    reset_proxy_state()
    yield


@pytest.fixture(scope="session")
def _second_upstream_server():
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def second_upstream(_second_upstream_server):
    yield _second_upstream_server.reset()
    _second_upstream_server.reset()


@pytest.fixture
def proxy(settings, fake_upstream, second_upstream):
    """Route "chat": primary (OpenAI-compatible) -> secondary (Anthropic) -> extractive,
    each on its own fake upstream."""
    settings.LLM_PROVIDERS = {
        "primary": openai_provider(fake_upstream, model="fake-model"),
        "secondary": anthropic_provider(second_upstream, model="fake-claude"),
        "extractive": EXTRACTIVE,
    }
    settings.LLM_ROUTES = {
        "chat": {"providers": ["primary", "secondary", "extractive"], "params": {"temperature": 0.1},
                 "max_tokens": 200, "context_window": 4096},
        "enrich": {"providers": ["primary", "extractive"], "max_tokens": 100, "context_window": 4096},
    }
    settings.LLM_PRICES = PRICES
    return type("Proxy", (), {"primary": fake_upstream, "secondary": second_upstream, "settings": settings})


def start_proxy_server(upstream, **env) -> SimpleNamespace:
    """A real uvicorn serving Quire on the test database, its ``openai`` provider being
    ``upstream``; ``env`` adds environment variables. Call ``.stop()`` when done."""
    from tests.conftest import BASE_DIR, child_env, free_port, wait_until_healthy

    port = free_port()
    environment = child_env(LLM_OPENAI_BASE_URL=upstream.url, LLM_OPENAI_API_KEY="upstream-key",
                            LLM_OPENAI_MODEL="gpt-4o-mini", LOG_LEVEL="WARNING", **env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--lifespan", "off", "--log-level", "warning"],
        cwd=BASE_DIR, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(base, proc, lambda: proc.stdout.read().decode(errors="replace"))

    def stop():
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    return SimpleNamespace(url=base, upstream=upstream, stop=stop)


def question(text: str = "What does aspirin do?") -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


__all__ = ["django_settings", "question"]
