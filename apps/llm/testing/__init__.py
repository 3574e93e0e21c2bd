"""Test doubles that live beside the real backends (like Django's locmem email
backend): a real OpenAI/Anthropic-compatible HTTP server on 127.0.0.1, and
helpers to point the proxy's settings at it."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from apps.core.loops import keep_resources


def openai_provider(upstream, *, model: str = "fake-model", **options) -> dict:
    """An ``LLM_PROVIDERS`` entry for an OpenAI-compatible fake upstream."""
    return {"BACKEND": "apps.llm.backends.openai.OpenAIChatBackend",
            "OPTIONS": {"base_url": upstream.url, "api_key": "test-key", "model": model, **options}}


def anthropic_provider(upstream, *, model: str = "fake-claude", **options) -> dict:
    return {"BACKEND": "apps.llm.backends.anthropic.AnthropicBackend",
            "OPTIONS": {"base_url": upstream.root_url, "api_key": "test-key", "model": model, **options}}


EXTRACTIVE = {"BACKEND": "apps.llm.backends.extractive.ExtractiveBackend", "OPTIONS": {}}


def run(async_fn, *args, **kwargs):
    """Run ``async_fn`` from synchronous test code, in the calling thread's
    database connection (``async_to_sync``), closing that loop's HTTP pool after."""
    from apps.llm import runtime
    from apps.llm.services import drain_pending_records

    async def wrapper():
        keep_resources()  # closed below, so the loop may keep a database pool meanwhile
        try:
            return await async_fn(*args, **kwargs)
        finally:
            await drain_pending_records()
            await runtime.aclose_loop_resources()

    return async_to_sync(wrapper)()


async def collect(request) -> list:
    """Every event of ``stream_chat(request)``."""
    from apps.llm.services import stream_chat

    return [event async for event in stream_chat(request)]


def flush_ledger_until(count: int, *, timeout: float = 5.0) -> int:
    """Flush the ledger queue until ``count`` rows exist (rows from another
    process, e.g. a uvicorn under test, reach Redis just after its response)."""
    import time

    from apps.llm import ledger
    from apps.llm.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        ledger.flush()
        rows = UsageRecord.objects.count()
        if rows >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def reset_proxy_state() -> None:
    """Forget this deployment's (test run's) breakers, cached answers, spend and queued
    ledger rows, and the per-process API key / budget caches."""
    from apps.llm import runtime
    from apps.llm.services import forget_cached_keys

    client = runtime.sync_redis()
    for key in client.scan_iter(match=runtime.key("*"), count=1000):
        client.delete(key)
    forget_cached_keys()
