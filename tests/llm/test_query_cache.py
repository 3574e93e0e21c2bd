"""Query vectors shared between processes through the real Redis (apps.llm.embeddings.query_cache)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

from apps.core import degraded
from apps.llm.embeddings import get_embedding_backend, reset_embedding_backends
from apps.llm.embeddings.testing import recorded_calls
from apps.llm.metrics import QUERY_EMBEDDING_CACHE
from apps.llm.runtime import sync_redis
from apps.llm.testing import run
from tests.conftest import BASE_DIR, child_env
from tests.llm.test_embeddings import embeddings_server, http_backend  # noqa: F401 - a fixture

QUESTION = "How do tidal currents shape estuaries?"


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def shared(settings):
    settings.EMBEDDING_QUERY_SHARED_CACHE_SECONDS = 60
    settings.EMBEDDING_QUERY_CACHE_SIZE = 16
    reset_embedding_backends()
    key, client = get_embedding_backend()._shared_key(QUESTION), sync_redis()
    client.delete(key)
    yield key
    client.delete(key)
    reset_embedding_backends()


def _results():
    return {result: QUERY_EMBEDDING_CACHE.labels(result)._value.get() for result in ("hit", "shared_hit", "miss")}


def _close(a, b):
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-6


def test_a_query_another_process_embedded_is_not_embedded_again(shared):
    script = ("import django; django.setup()\n"
              "from apps.llm.embeddings import get_embedding_backend\n"
              f"get_embedding_backend().embed_query({QUESTION!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=BASE_DIR, timeout=120, capture_output=True, text=True,
                          env=child_env(EMBEDDING_QUERY_SHARED_CACHE_SECONDS="60"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0 < sync_redis().ttl(shared) <= 60
    assert QUESTION.encode() not in sync_redis().get(shared)  # the question's text is not stored

    calls, before = recorded_calls()["calls"], _results()
    backend = get_embedding_backend()
    vector = backend.embed_query(QUESTION)
    assert _close(vector, backend.vector(QUESTION))
    assert recorded_calls()["calls"] == calls  # found, not embedded
    backend.embed_query(QUESTION)  # now this process's own
    after = _results()
    assert (after["shared_hit"] - before["shared_hit"], after["hit"] - before["hit"]) == (1, 1)
    assert after["miss"] == before["miss"]


def test_the_async_path_shares_too(shared):
    backend = get_embedding_backend()
    calls = recorded_calls()["calls"]

    async def ask():
        vector = await backend.aembed_query(QUESTION)
        from apps.llm.embeddings import query_cache

        for task in list(query_cache._pending):  # the store the caller did not wait for
            await task
        return vector

    first = run(ask)
    assert recorded_calls()["calls"] == calls + 1
    reset_embedding_backends()  # another process, as far as the kept queries go
    again = run(get_embedding_backend().aembed_query, QUESTION)
    assert _close(again, first) and recorded_calls()["calls"] == calls + 1


def test_models_and_sizes_do_not_share_vectors(shared, settings):
    backend = get_embedding_backend()
    settings.EMBEDDING_BACKENDS = {**settings.EMBEDDING_BACKENDS, "small": {
        "BACKEND": "apps.llm.embeddings.testing.DeterministicBackend", "OPTIONS": {"DIMENSIONS": 8}}}
    small = get_embedding_backend("small")
    assert small.model_id == backend.model_id and small._shared_key(QUESTION) != shared
    backend.embed_query(QUESTION)
    calls = recorded_calls("small")["calls"]
    assert len(small.embed_query(QUESTION)) == 8 and recorded_calls("small")["calls"] == calls + 1


def test_without_redis_the_query_is_embedded_and_one_warning_says_so(shared, settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    degraded.reset()
    before = metric("quire_redis_unavailable_total", component="embedding.query_cache")
    backend = get_embedding_backend()
    calls = recorded_calls()["calls"]
    assert _close(backend.embed_query(QUESTION), backend.vector(QUESTION))
    assert _close(backend.embed_query("another question"), backend.vector("another question"))
    assert recorded_calls()["calls"] == calls + 2
    assert caplog.text.count("embedding.query_cache.redis_unavailable") == 1  # not one per query
    # ...but every one is counted: a miss's GET and a store's SET per query
    assert metric("quire_redis_unavailable_total", component="embedding.query_cache") == before + 4


def test_off_shares_nothing(shared, settings):
    settings.EMBEDDING_QUERY_SHARED_CACHE_SECONDS = 0
    backend = get_embedding_backend()
    assert backend._shared_key(QUESTION) is None
    backend.embed_query(QUESTION)
    assert sync_redis().get(shared) is None


def test_a_provider_is_not_called_again_for_a_query_another_process_sent(shared, embeddings_server):  # noqa: F811
    """An embedding provider over HTTP (on the event loop): a shared hit saves a paid call."""
    from apps.llm.embeddings import query_cache

    first, second = http_backend(embeddings_server.url), http_backend(embeddings_server.url)  # two processes
    sync_redis().delete(first._shared_key(QUESTION))

    async def ask(backend):
        vector = await backend.aembed_query(QUESTION)
        for task in list(query_cache._pending):
            await task
        return vector

    try:
        vector = run(ask, first)
        assert len(embeddings_server.handler.requests) == 1
        assert _close(run(ask, second), vector)
        assert len(embeddings_server.handler.requests) == 1  # found in Redis, not asked again
    finally:
        sync_redis().delete(first._shared_key(QUESTION))


def test_chat_questions_keep_to_the_process(shared):
    """Chat's early question embedding (the async retrieval) neither reads nor stores shared vectors:
    a question is rarely asked twice word for word, and the round trip would come before its first token."""
    from apps.llm.embeddings import query_cache
    from apps.search.services import aembed_query_soon

    sync_redis().set(shared, query_cache._encode([0.5] * 384), ex=60)  # another process's vector
    calls = recorded_calls()["calls"]

    async def ask():
        vector = await aembed_query_soon(QUESTION)
        for task in list(query_cache._pending):
            await task
        return vector

    vector = run(ask)
    assert recorded_calls()["calls"] == calls + 1  # embedded here, the shared copy not read
    assert _close(list(vector), get_embedding_backend().vector(QUESTION))
    assert query_cache._decode(sync_redis().get(shared), 384) == [0.5] * 384  # nor replaced
