"""Backing services down. Without Redis every surface keeps answering (degraded, never a 500),
says so once a minute per component, counts every occurrence, and loses no document; a Redis that
hangs costs one timeout per process, not one per request. Without PostgreSQL every surface
answers a plain 503 with Retry-After.

The site runs under uvicorn against a Redis of its own (cache, rate limits, LLM state and
Celery broker alike), which the test stops, or against a PostgreSQL address nobody listens on.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import redis

from apps.core import degraded
from apps.documents.models import Document
from apps.documents.tasks import embed_document, requeue_stranded
from apps.llm.services import api_key_create
from tests.chat.sse_client import AppServer, parse_sse
from tests.conftest import BASE_DIR, child_env, free_port
from tests.documents.conftest import wait_for
from tests.factories.documents import DocumentFactory, StaffFactory


@contextlib.contextmanager
def silent_redis():
    """The URL of a server that accepts connections and never answers: a Redis that hangs (a
    failover, a frozen server), which is worse than one that refuses."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        server.close()
        for connection in held:
            connection.close()


def _timed(call) -> tuple[object, float]:
    started = time.perf_counter()
    try:
        result = call()
    except redis.exceptions.RedisError as exc:
        result = exc
    return result, time.perf_counter() - started


def test_a_redis_that_hangs_costs_one_timeout_per_process_then_nothing(settings):
    from apps.core.cache import RedisCache
    from apps.llm import cache as llm_cache
    from apps.llm.testing import run

    timeout = degraded.REDIS_TIMEOUTS["socket_timeout"]
    with silent_redis() as url:
        counters = RedisCache(url, {"KEY_PREFIX": "hang"})  # Django's cache (the API's rate limits)
        first, waited = _timed(lambda: counters.count("k", 60))
        assert isinstance(first, redis.exceptions.RedisError) and waited < 1.5 * timeout  # one timeout, not a retry's too
        again, instant = _timed(lambda: counters.count("k", 60))
        assert isinstance(again, degraded.RedisKnownDown) and "TimeoutError" in str(again) and instant < 0.2
        # the LLM layer's clients (asyncio) refuse at once as well: its cache reads a miss
        settings.REDIS_URL = url
        miss, instant = _timed(lambda: run(llm_cache.get, "hang:key", route="chat"))
        assert miss is None and instant < 0.2
        degraded._down_until[0] = time.monotonic()  # the window has passed: the next call tries Redis again
        retried, waited = _timed(lambda: counters.count("k", 60))
        assert isinstance(retried, redis.exceptions.RedisError) and waited >= 0.9 * timeout
        assert degraded.redis_known_down()  # ...and marks it down again


def test_a_full_connection_pool_is_not_an_outage(settings):
    """2,000 streams can take every connection of a process's pool for a moment (bench sse): the
    wait that times out is counted like an outage, but Redis is not marked down for it."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.REDIS_URL, max_connections=1, timeout=0.1,
        connection_class=degraded.fail_fast_connection_class(settings.REDIS_URL))
    held = pool.get_connection()
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match="No connection available") as caught:
            pool.get_connection()
        degraded.redis_unavailable("test.pool", caught.value)
        assert not degraded.redis_known_down()
        assert redis.Redis(connection_pool=redis.ConnectionPool.from_url(
            settings.REDIS_URL, connection_class=degraded.fail_fast_connection_class(settings.REDIS_URL))).ping()
    finally:
        pool.release(held)
        pool.disconnect()


@pytest.mark.django_db(transaction=True)
def test_with_a_redis_that_hangs_the_site_answers_at_once_after_the_first_timeout(_fake_upstream_server):
    from rest_framework.authtoken.models import Token

    staff = StaffFactory()
    embed_document(DocumentFactory(author=staff, title="Geysers", body="Geysers erupt hot water and steam.").pk)
    auth = {"Authorization": f"Token {Token.objects.create(user=staff).key}"}
    with silent_redis() as url:
        server = AppServer(free_port(), child_env(REDIS_URL=url, LLM_OPENAI_BASE_URL=_fake_upstream_server.url,
                                                  LLM_OPENAI_API_KEY="test-key")).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                first, waited = _timed(lambda: client.get("/api/v1/search", params={"q": "geysers"}, headers=auth))
                assert first.status_code == 200 and waited < 2 * degraded.REDIS_TIMEOUTS["socket_timeout"]
                started = time.perf_counter()
                for _ in range(5):
                    assert client.get("/api/v1/search", params={"q": "geysers"}, headers=auth).status_code == 200
                created = client.post("/api/v1/documents", headers=auth, json={
                    "title": "Saved while Redis hangs", "body": "Tides.", "visibility": "public", "status": "published"})
                assert created.status_code == 201 and created.json()["embedding_status"] == "pending"
                assert "Geysers" in client.get("/search", params={"q": "geysers"}).text
                # seven requests, none waiting for Redis (each would have waited 2-10 s, a save for ever)
                assert time.perf_counter() - started < 3.0
        finally:
            server.stop()
    assert "Internal Server Error" not in server.log.read_text()


def _warnings(log: str) -> dict[str, int]:
    """How many times each ``<component>.redis_unavailable`` warning was logged."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if line.startswith("{") and '.redis_unavailable"' in line:
            event = json.loads(line)["event"]
            counts[event] = counts.get(event, 0) + 1
    return counts


def _counted(metrics: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^quire_redis_unavailable_total\{component="([^"]+)"\} (\S+)$', metrics, re.M)}


@pytest.mark.django_db(transaction=True)
def test_without_redis_every_surface_answers_and_nothing_is_lost(redis_server, _fake_upstream_server, worker_factory,
                                                                settings):
    from rest_framework.authtoken.models import Token

    staff = StaffFactory()
    embed_document(DocumentFactory(author=staff, title="Geysers", body="Geysers erupt hot water and steam.").pk)
    auth = {"Authorization": f"Token {Token.objects.create(user=staff).key}"}
    _, raw_key = api_key_create(name="outage", user=staff)
    gateway = {"Authorization": f"Bearer {raw_key}"}
    server = AppServer(free_port(), child_env(REDIS_URL=redis_server.url, LLM_OPENAI_BASE_URL=_fake_upstream_server.url,
                                              LLM_OPENAI_API_KEY="test-key")).start()
    try:
        redis_server.stop()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for headers in [auth] * 5 + [{}]:  # the API's rate limit admits (anonymous too), warns once
                found = client.get("/api/v1/search", params={"q": "geysers"}, headers=headers)
                assert found.status_code == 200 and found.json()["results"][0]["title"] == "Geysers", found.text
            assert "Geysers" in client.get("/search", params={"q": "geysers"}).text

            conversation = client.post("/api/v1/chat/conversations", json={}, headers=auth)
            assert conversation.status_code == 201, conversation.text
            stream = client.post(f"/api/v1/chat/conversations/{conversation.json()['id']}/messages",
                                 json={"question": "What do geysers erupt?"}, headers=auth)
            events = parse_sse(stream.text)
            assert stream.status_code == 200 and events[-1][0] == "done", stream.text[-500:]
            assert events[-1][1]["status"] == "complete" and "".join(
                e[1]["text"] for e in events if e[0] == "token").startswith("tok0")

            completion = client.post("/v1/chat/completions", headers=gateway,
                                     json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
            assert completion.status_code == 200, completion.text
            embedding = client.post("/v1/embeddings", headers=gateway, json={"model": "default", "input": "hi"})
            assert embedding.status_code == 200 and len(embedding.json()["data"][0]["embedding"]) == 384

            created = client.post("/api/v1/documents", headers=auth, json={
                "title": "Saved during the outage", "body": "Tidal currents shape estuaries.",
                "visibility": "public", "status": "published"})
            assert created.status_code == 201, created.text
            assert created.json()["embedding_status"] == "pending"
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    log = server.log.read_text()
    assert '"api.unhandled_error"' not in log and "Internal Server Error" not in log

    # Each component said so once, however many requests went on without Redis...
    warned = _warnings(log)
    for component in ("api.throttle", "chat.rate_limit", "llm.cache", "llm.breaker", "llm.budget", "llm.ledger",
                      "llm.api_key", "documents.enqueue"):
        assert warned.get(f"{component}.redis_unavailable") == 1, warned
    # ...and the metric counted every one of them.
    counted = _counted(metrics)
    assert counted["api.throttle"] >= 9, counted  # 6 searches, the conversation, its question, the document
    assert counted["documents.enqueue"] == 1 and counted["chat.rate_limit"] == 1, counted

    # The document saved meanwhile was never queued: the sweep queues it, a real worker embeds it.
    document = Document.objects.get(title="Saved during the outage")
    assert document.embedding_status == "pending"
    settings.DOCUMENT_REQUEUE_MIN_AGE_SECONDS = 0
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-outage"
    assert requeue_stranded(queue=queue) == 1
    assert requeue_stranded(queue=queue) == 0  # its task is waiting: not queued twice
    worker_factory(queue=queue)
    wait_for(lambda: Document.objects.get(pk=document.pk).embedding_status == "ready", message="the sweep's task")
    assert document.chunks.count() >= 1
    assert requeue_stranded(queue=queue) == 0  # nothing stranded any more


@pytest.mark.django_db(transaction=True)
def test_celery_beat_in_the_worker_queues_a_document_no_task_was_sent_for(worker_factory, settings, tmp_path):
    """The schedule as make run and docker/compose.yml run it: beat beside the worker."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-beat"
    # bulk_create sends no post_save: the document is saved and nothing is queued for it, as when
    # the broker refused the task, or lost it with its data
    stranded = Document.objects.bulk_create([DocumentFactory.build(title="Never queued", body="Estuaries mix water.")])[0]
    assert stranded.embedding_status == "pending"
    worker_factory(queue=queue, extra_env={"CELERY_TASK_DEFAULT_QUEUE": queue, "DOCUMENT_REQUEUE_SECONDS": "1",
                                           "DOCUMENT_REQUEUE_MIN_AGE_SECONDS": "0"},
                   extra_args=("--beat", "--schedule", str(tmp_path / "celerybeat-schedule")))
    wait_for(lambda: Document.objects.get(pk=stranded.pk).embedding_status == "ready", timeout=60,
             message="beat's documents.requeue_stranded, then the embedding")
    assert Document.objects.get(pk=stranded.pk).chunks.count() >= 1


@pytest.mark.django_db(transaction=True)
def test_an_import_while_the_broker_is_down_saves_everything_and_says_what_waits(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": f"Title {i}", "text": f"Body {i}."}) + "\n"
                              for i in range(5)))
    completed = subprocess.run(
        [sys.executable, "manage.py", "import_documents", str(corpus), "--source", "outage", "--batch-size", "2",
         "--no-progress"],
        cwd=BASE_DIR, env=child_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),  # nothing listens there
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "outage: 5 created" in completed.stdout and "0 queued for embedding" in completed.stdout
    assert "5 documents stay pending" in completed.stderr
    assert set(Document.objects.filter(source="outage").values_list("embedding_status", flat=True)) == {"pending"}


def test_a_component_warns_once_a_minute_and_counts_every_time(caplog):
    from prometheus_client import REGISTRY

    def counted() -> float:
        return REGISTRY.get_sample_value("quire_redis_unavailable_total", {"component": "test.part"}) or 0.0

    degraded.reset()
    before = counted()
    for _ in range(3):
        degraded.redis_unavailable("test.part", ConnectionError("refused"))
    assert caplog.text.count("test.part.redis_unavailable") == 1
    assert counted() == before + 3
    degraded._last["test.part.redis_unavailable"] -= degraded._WARN_EVERY_S  # a minute later
    degraded.redis_unavailable("test.part", ConnectionError("refused"))
    lines = [line for line in caplog.text.splitlines() if "test.part.redis_unavailable" in line]
    assert len(lines) == 2 and re.search(r"suppressed.\W*2\b", lines[-1]), lines  # the two not logged since


def test_without_postgresql_every_surface_answers_503_with_retry_after(_fake_upstream_server):
    """Nothing can be answered, and it is said plainly: a 503 with Retry-After (the envelope on
    API paths, a short page elsewhere), counted, logged once a minute; no 500, no traceback."""
    env = child_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/quire",  # nothing listens there
                    DB_POOL_TIMEOUT="1", LLM_OPENAI_BASE_URL=_fake_upstream_server.url, LLM_OPENAI_API_KEY="test-key")
    server = AppServer(free_port(), env).start()
    api = {"Authorization": "Token 0123456789abcdef0123456789abcdef01234567"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = {
                "page": client.get("/search", params={"q": "geysers"}),
                "document page": client.get("/d/geysers/"),
                "api": client.get("/api/v1/search", params={"q": "geysers"}, headers=api),
                "api, anonymous": client.get("/api/v1/documents"),
                "chat stream": client.post("/api/v1/chat/conversations/1/messages", json={"question": "Why?"},
                                           headers=api),
                "gateway": client.post("/v1/chat/completions", headers={"Authorization": "Bearer qk_0123456789"},
                                       json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}),
            }
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    for surface, response in answers.items():
        assert response.status_code == 503 and response.headers["Retry-After"] == "5", (surface, response.text[:300])
        if surface in ("page", "document page"):
            assert "Quire is unavailable for a moment" in response.text
        else:
            assert response.json()["error"]["code"] == "database_unavailable", (surface, response.text[:300])
    log = server.log.read_text()
    assert "Internal Server Error" not in log and '"api.unhandled_error"' not in log and "Traceback" not in log
    assert log.count('"database.unavailable"') == 1  # once a minute per process, however many requests
    counted = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^quire_database_unavailable_total\{surface="([^"]+)"\} (\S+)$', metrics, re.M)}
    assert counted == {"page": 2.0, "api": 3.0, "gateway": 1.0}, counted
