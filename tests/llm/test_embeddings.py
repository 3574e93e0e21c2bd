"""Embedding backends: the per-alias registry, the OpenAI-compatible HTTP backend
against a real HTTP server on 127.0.0.1, the deterministic test backend, and the
start-up dimension check."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from apps.llm.embeddings import (
    EmbeddingBadResponse,
    EmbeddingRateLimited,
    EmbeddingUnavailable,
    get_embedding_backend,
    reset_embedding_backends,
)
from apps.llm.embeddings.openai_http import OpenAIHTTPBackend
from apps.llm.exceptions import LLMError
from tests.conftest import BASE_DIR, child_env


@pytest.fixture
def fresh_registry():
    reset_embedding_backends()
    yield
    reset_embedding_backends()


def test_one_instance_per_alias_even_under_concurrent_first_use(fresh_registry):
    seen = []
    barrier = threading.Barrier(8)

    def grab():
        barrier.wait()
        seen.append(get_embedding_backend())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(b) for b in seen}) == 1
    assert get_embedding_backend("minilm") is not get_embedding_backend("default")


def test_unknown_options_and_aliases_are_configuration_errors(fresh_registry):
    bad = {"default": {"BACKEND": "apps.llm.embeddings.testing.DeterministicBackend", "OPTIONS": {"DIMS": 384}}}
    with override_settings(EMBEDDING_BACKENDS=bad), pytest.raises(ImproperlyConfigured, match="unknown OPTIONS"):
        get_embedding_backend()
    with pytest.raises(ImproperlyConfigured, match="no alias 'nope'"):
        get_embedding_backend("nope")
    missing = {"default": {"BACKEND": "apps.llm.embeddings.nowhere.Backend"}}
    with override_settings(EMBEDDING_BACKENDS=missing), pytest.raises(ImproperlyConfigured, match="cannot import"):
        get_embedding_backend()


def test_deterministic_backend_puts_texts_sharing_words_close_together():
    backend = get_embedding_backend()
    a, b, c = backend.embed_documents(["Celery workers embed documents", "the worker embeds a document",
                                       "chocolate cake recipe"])
    cosine = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731 - vectors are normalised
    assert len(a) == backend.dimensions == 384
    assert abs(cosine(a, a) - 1) < 1e-9
    assert cosine(a, b) > 0.5 > cosine(a, c)
    assert backend.embed_documents(["Celery workers embed documents"])[0] == a  # deterministic


# --- OpenAI-compatible HTTP backend against a real local server ------------------------------
class ScriptedEmbeddings(BaseHTTPRequestHandler):
    """Answers POST /v1/embeddings from a script of (status, headers, body) steps."""

    script: list = []
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "payload": payload, "at": time.monotonic(),
                                    "auth": self.headers.get("Authorization")})
        status, headers, body = type(self).script.pop(0) if type(self).script else (200, {}, None)
        if body is None:
            body = {"object": "list", "model": payload["model"], "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(t))] + [1.0] * 3}
                for i, t in enumerate(payload["input"])]}
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def embeddings_server():
    ScriptedEmbeddings.script, ScriptedEmbeddings.requests = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedEmbeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield type("Server", (), {"url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                              "handler": ScriptedEmbeddings})
    server.shutdown()
    server.server_close()


def http_backend(url, **options):
    return OpenAIHTTPBackend("remote", BASE_URL=url, MODEL="tiny-embed", DIMENSIONS=4, MAX_TOKENS=512,
                             API_KEY="sk-test", BACKOFF_BASE=0.01, **options)


def _embed_sync(backend, text):
    return backend.embed_query(text)


def _embed_on_the_loop(backend, text):
    """aembed_query: the same request, retries and errors over the loop's aiohttp session."""
    from apps.llm.testing import run

    return run(backend.aembed_query, text)


# Every query-embedding test runs both ways: httpx in the caller's thread, aiohttp on the event loop.
embed_query = pytest.mark.parametrize("embed", [_embed_sync, _embed_on_the_loop], ids=["sync", "async"])


def test_http_backend_batches_and_normalises(embeddings_server):
    backend = http_backend(embeddings_server.url, BATCH_SIZE=2)
    vectors = backend.embed_documents(["a", "bbb", "cc"])
    assert len(embeddings_server.handler.requests) == 2  # batches of 2
    assert embeddings_server.handler.requests[0]["payload"]["input"] == ["a", "bbb"]
    assert embeddings_server.handler.requests[0]["auth"] == "Bearer sk-test"
    # base64 asked for, as OpenAI's SDK does; this server ignores it and answers floats: read as well.
    assert embeddings_server.handler.requests[0]["payload"]["encoding_format"] == "base64"
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in vectors)
    assert vectors[1][0] > vectors[0][0]  # order kept


@embed_query
def test_http_backend_retries_429_honouring_retry_after_then_succeeds(embeddings_server, embed):
    embeddings_server.handler.script = [
        (429, {"Retry-After": "0.3"}, {"error": {"message": "slow down"}}),
        (503, {}, {"error": {"message": "overloaded"}}),
    ]
    backend = http_backend(embeddings_server.url)
    assert len(embed(backend, "hello")) == 4
    times = [r["at"] for r in embeddings_server.handler.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.3  # waited as told by Retry-After


@embed_query
def test_http_backend_gives_up_with_a_clear_error(embeddings_server, embed):
    embeddings_server.handler.script = [(500, {}, {"error": {"message": "boom"}})] * 3
    with pytest.raises(EmbeddingUnavailable, match="HTTP 500: boom") as info:
        embed(http_backend(embeddings_server.url, MAX_RETRIES=2), "x")
    assert info.value.transient and isinstance(info.value, LLMError)
    assert len(embeddings_server.handler.requests) == 3

    embeddings_server.handler.script = [(429, {}, {"error": {"message": "quota"}})]
    with pytest.raises(EmbeddingRateLimited):
        embed(http_backend(embeddings_server.url, MAX_RETRIES=0), "x")


@embed_query
def test_http_backend_does_not_retry_client_errors_or_accept_wrong_dimensions(embeddings_server, embed):
    embeddings_server.handler.script = [(400, {}, {"error": {"message": "input too long"}})]
    with pytest.raises(EmbeddingBadResponse, match="HTTP 400: input too long") as info:
        embed(http_backend(embeddings_server.url), "x")
    assert not info.value.transient
    assert len(embeddings_server.handler.requests) == 1

    embeddings_server.handler.script = [(200, {}, {"data": [{"index": 0, "embedding": [1.0, 2.0]}]})]
    with pytest.raises(EmbeddingBadResponse, match="returned 2-d vectors, configured for 4"):
        embed(http_backend(embeddings_server.url), "x")


@embed_query
def test_http_backend_connection_refused_is_unavailable(embed):
    from tests.conftest import free_port

    backend = http_backend(f"http://127.0.0.1:{free_port()}/v1", MAX_RETRIES=1)
    with pytest.raises(EmbeddingUnavailable, match="unreachable"):
        embed(backend, "x")


def _base64_floats(values):
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@embed_query
def test_http_backend_reads_base64_float32_vectors(embeddings_server, embed):
    """A server that honours ``encoding_format: base64`` sends each vector as its little-endian
    float32 bytes (a quarter of the JSON floats): decoded and normalised like floats."""
    embeddings_server.handler.script = [(200, {}, {"data": [{"index": 0, "embedding": _base64_floats([3, 0, 4, 0])}]})]
    assert embed(http_backend(embeddings_server.url), "x") == pytest.approx([0.6, 0.0, 0.8, 0.0])
    assert embeddings_server.handler.requests[-1]["payload"]["encoding_format"] == "base64"

    embeddings_server.handler.script = [(200, {}, {"data": [{"index": 0, "embedding": "not base64!"}]})]
    with pytest.raises(EmbeddingBadResponse, match="malformed response"):
        embed(http_backend(embeddings_server.url, MAX_RETRIES=0), "x")
    embeddings_server.handler.script = [(200, {}, {"data": [{"index": 0, "embedding": "AAAA"}]})]  # 3 bytes
    with pytest.raises(EmbeddingBadResponse, match="not float32s"):
        embed(http_backend(embeddings_server.url, MAX_RETRIES=0), "x")
    embeddings_server.handler.script = [(200, {}, {"data": [{"index": 0, "embedding": _base64_floats([1, 2])}]})]
    with pytest.raises(EmbeddingBadResponse, match="returned 2-d vectors, configured for 4"):
        embed(http_backend(embeddings_server.url), "x")


def test_http_backend_can_ask_for_json_floats(embeddings_server):
    """``ENCODING_FORMAT=float`` for a server that refuses base64; anything else is a configuration error."""
    assert http_backend(embeddings_server.url, ENCODING_FORMAT="float").embed_query("ab")[0] == pytest.approx(2 / 7 ** 0.5)
    assert embeddings_server.handler.requests[-1]["payload"]["encoding_format"] == "float"
    with pytest.raises(ImproperlyConfigured, match="ENCODING_FORMAT must be base64 or float"):
        http_backend(embeddings_server.url, ENCODING_FORMAT="binary")


# --- start-up dimension check ---------------------------------------------------------------
@pytest.mark.parametrize("command", [
    [sys.executable, "manage.py", "check"],
    [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker", "--pool", "solo", "-Q", "nothing-here"],
])
def test_a_dimension_mismatch_stops_start_up(command):
    env = child_env(DJANGO_SETTINGS_MODULE="tests.llm.settings_embedding_mismatch")
    proc = subprocess.run(command, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "produces 768-d vectors but documents_chunk.embedding stores 384-d vectors" in output


def test_recent_query_vectors_are_kept_per_process_and_failures_are_not(settings, fresh_registry):
    from apps.llm.embeddings.testing import fail_embeddings, recorded_calls
    from apps.llm.metrics import QUERY_EMBEDDING_CACHE

    settings.EMBEDDING_QUERY_CACHE_SIZE = 2
    backend = get_embedding_backend()
    calls = lambda: recorded_calls("default")["calls"]  # noqa: E731
    hits = lambda: QUERY_EMBEDDING_CACHE.labels("hit")._value.get()  # noqa: E731
    start, start_hits = calls(), hits()

    first = backend.embed_query("tides and the moon")
    assert backend.embed_query("tides and the moon") == first  # the same vector, not embedded again
    assert calls() - start == 1 and hits() - start_hits == 1
    backend.embed_query("glaciers")
    backend.embed_query("tides and the moon")  # used again: now the most recent
    backend.embed_query("volcanoes")  # over the size: the least recently used (glaciers) goes
    assert calls() - start == 3
    backend.embed_query("tides and the moon")
    assert calls() - start == 3
    backend.embed_query("glaciers")
    assert calls() - start == 4

    fail_embeddings()
    try:
        with pytest.raises(EmbeddingUnavailable):
            backend.embed_query("coral reefs")
    finally:
        fail_embeddings(False)
    assert backend.embed_query("coral reefs") == backend.vector("coral reefs")  # the failure was not kept
    assert calls() - start == 6  # the failed call and the one after it
    backend.clear_query_cache()
    backend.embed_query("tides and the moon")
    assert calls() - start == 7

    settings.EMBEDDING_QUERY_CACHE_SIZE = 0  # off: every query is embedded
    backend.embed_query("volcanoes")
    assert calls() - start == 8


def test_the_async_query_embedding_shares_the_kept_vectors(settings, fresh_registry, monkeypatch):
    from apps.llm.embeddings.testing import recorded_calls
    from apps.llm.testing import run

    settings.EMBEDDING_QUERY_CACHE_SIZE = 2
    backend = get_embedding_backend()
    start = recorded_calls("default")["calls"]
    threads = []
    embed = type(backend)._embed

    def recorded(self, texts, *, kind):
        threads.append(threading.current_thread().name)
        return embed(self, texts, kind=kind)

    monkeypatch.setattr(type(backend), "_embed", recorded)
    on_the_loop = run(backend.aembed_query, "tides and the moon")  # a model in this process: in its threads
    assert threads and threads[0].startswith("embedding-model")
    assert backend.embed_query("tides and the moon") == on_the_loop == backend.vector("tides and the moon")
    assert run(backend.aembed_query, "tides and the moon") == on_the_loop
    assert recorded_calls("default")["calls"] - start == 1


def test_a_waiting_query_goes_before_a_batch_waiting_for_the_local_model():
    """The model runs one call at a time; when it is free, a single query waiting (a search, a
    chat question) goes before the next slice of somebody's batch, whichever waited first.
    (Without the priority the batch, waiting first, went first in 29 of 30 rounds.)"""
    import threading
    import time

    from apps.llm.embeddings.sentence_transformers import ModelLock

    def one_round() -> list[str]:
        lock, order = ModelLock(), []
        holding, release = threading.Event(), threading.Event()

        def holder():
            with lock.hold():
                holding.set()
                release.wait(5)

        def waiter(name, urgent):
            with lock.hold(urgent=urgent):
                order.append(name)

        threads = [threading.Thread(target=holder)]
        threads[0].start()
        assert holding.wait(5)
        for name, urgent in (("batch", False), ("query", True)):
            threads.append(threading.Thread(target=waiter, args=(name, urgent)))
            threads[-1].start()
            time.sleep(0.02)  # both are waiting, the batch first
        release.set()
        for thread in threads:
            thread.join(5)
        return order

    assert [one_round() for _ in range(10)] == [["query", "batch"]] * 10
