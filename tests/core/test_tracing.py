"""Traces for operators, end to end: a real uvicorn web process and a real Celery worker,
both with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a fake OTLP/HTTP collector (a real HTTP
server decoding the protobuf the SDK's exporter sends), and Sentry switched on beside them.
Without the endpoint nothing of OpenTelemetry is even imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import uuid
from types import SimpleNamespace

import httpx
import pytest
from django.conf import settings
from rest_framework.authtoken.models import Token

from apps.chat.models import Message
from apps.core.testing.otlp_collector import FakeCollector, ReceivedSpan
from apps.core.worker_process import WorkerProcess
from tests.chat.sse_client import parse_sse
from tests.conftest import BASE_DIR, child_env, free_port, wait_until_healthy
from tests.factories.documents import StaffFactory
from tests.factories.search import indexed_document

PSYCOPG = "opentelemetry.instrumentation.psycopg"
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED")


@pytest.fixture(scope="module")
def collector():
    server = FakeCollector().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced(collector, django_db_setup, django_db_blocker, _fake_upstream_server, tmp_path_factory):
    """A web process (uvicorn, config.asgi) and a Celery worker with traces and Sentry on, on a
    queue of their own; the web process's LLM is the fake upstream."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-traced"
    with django_db_blocker.unblock():
        env = child_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="50", CELERY_TASK_DEFAULT_QUEUE=queue,
            SENTRY_DSN=f"http://public@127.0.0.1:{collector.port}/1", SENTRY_TRACES_SAMPLE_RATE="1.0",
            LLM_OPENAI_BASE_URL=_fake_upstream_server.url, LLM_OPENAI_API_KEY="upstream-key", LLM_OPENAI_MODEL="fake-model",
        )
        port, log_path = free_port(), tmp_path_factory.mktemp("traced") / "web.log"
        with log_path.open("wb") as log:
            web = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                 "--lifespan", "off", "--log-level", "warning"],
                cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        worker = WorkerProcess(queue=queue, env=env, name="traced-worker")
        try:
            worker.start(timeout=60)  # meanwhile uvicorn starts too
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, web, lambda: log_path.read_text(errors="replace"))
            yield SimpleNamespace(url=url, log_path=log_path)
        finally:
            web.terminate()
            try:
                web.wait(10)
            except subprocess.TimeoutExpired:
                web.kill()
            worker.stop()


def server_span(collector: FakeCollector, *, method: str, route: str, path: str) -> ReceivedSpan:
    """The one server span of the request ``method path``."""
    return collector.wait_for(lambda spans: [
        s for s in spans
        if s.kind == "SERVER" and s.name == f"{method} {route}" and s.attributes.get("http.target") == path])[0]


def descends_from(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    while span.parent_span_id:
        if span.parent_span_id == ancestor.span_id:
            return True
        span = by_id.get(span.parent_span_id)
        if span is None:
            return False
    return False


def log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]


@pytest.mark.django_db(transaction=True)
def test_a_request_its_sql_and_its_log_line_share_one_trace(traced, collector):
    path, request_id = f"/api/v1/documents/{9_000_000 + os.getpid()}", uuid.uuid4().hex
    response = httpx.get(traced.url + path, headers={"X-Request-ID": request_id})
    assert response.status_code == 404

    server = server_span(collector, method="GET", route="/api/v1/documents/<pk>", path=path)
    assert server.parent_span_id == ""  # the request starts the trace
    assert server.attributes["http.route"] == "/api/v1/documents/<pk>"  # low cardinality: the route, not the id
    assert server.attributes["http.status_code"] == 404
    # The document lookup is a child of the server span (no Django span in between), inside it in time.
    lookups = [s for s in collector.trace(server.trace_id)
               if s.scope == PSYCOPG and 'FROM "documents_document"' in s.attributes["db.statement"]]
    assert len(lookups) == 1, lookups
    (lookup,) = lookups
    assert lookup.kind == "CLIENT" and lookup.name == "SELECT" and lookup.attributes["db.system"] == "postgresql"
    assert lookup.parent_span_id == server.span_id
    assert server.start_ns <= lookup.start_ns <= lookup.end_ns <= server.end_ns
    # The service says who it is.
    with open(BASE_DIR / "pyproject.toml", "rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    assert server.resource["service.name"] == "quire"
    assert server.resource["service.version"] == version
    assert server.resource["deployment.environment"] == settings.ENVIRONMENT

    # Django's "Not Found" warning of that request carries its trace and span ids beside the request id.
    (line,) = [line for line in log_lines(traced.log_path) if line.get("request_id") == request_id]
    assert line["event"] == f"Not Found: {path}"
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)


@pytest.mark.django_db(transaction=True)
def test_the_lean_proxy_path_is_traced(traced, collector):
    """/v1/ bypasses Django's middleware (apps/llm/asgi.py): the ASGI wrapper still sees it."""
    response = httpx.get(traced.url + "/v1/models", headers={"Authorization": "Bearer qk_not-a-key"})
    assert response.status_code == 401
    server = server_span(collector, method="GET", route="/v1/models", path="/v1/models")
    assert server.attributes["http.status_code"] == 401
    assert server.status == "UNSET"  # a 4xx is the client's error, not the server's
    # Probes are not traced (the fixture polled /healthz until the server was up).
    assert not [s for s in collector.spans if s.attributes.get("http.target") in ("/healthz", "/readyz", "/metrics")]


@pytest.mark.django_db(transaction=True)
def test_what_a_reader_searched_for_stays_out_of_the_trace(traced, collector):
    """Query strings reach the trace backend with their values REDACTED (names kept)."""
    secret = f"diagnosis of patient {uuid.uuid4().hex}"
    response = httpx.get(traced.url + "/search", params={"q": secret, "mode": "keyword"})
    assert response.status_code == 200
    server = collector.wait_for(lambda spans: [
        s for s in spans if s.kind == "SERVER" and s.name == "GET /search"
        and s.attributes.get("http.url", "").endswith("/search?q=REDACTED&mode=REDACTED")])[0]
    assert server.attributes["http.target"] == "/search"
    # Nowhere in the trace: not the server span, not its SQL (bound parameters are not recorded).
    spans = collector.trace(server.trace_id)
    assert len(spans) > 1
    assert not [s for s in spans if any(secret.split()[-1] in str(v) for v in s.attributes.values())]


@pytest.mark.django_db(transaction=True)
def test_sentry_keeps_its_own_transactions_beside_the_traces(traced, collector):
    """SENTRY_DSN and OTEL both set (the servers here run both): each gets the request, separately."""
    path = f"/api/v1/documents/{8_000_000 + os.getpid()}"
    assert httpx.get(traced.url + path).status_code == 404
    server = server_span(collector, method="GET", route="/api/v1/documents/<pk>", path=path)

    def sentry_transactions():
        items = [json.loads(line) for body in collector.other.get("/api/1/envelope/", [])
                 for line in body.splitlines() if line.startswith(b"{")]
        return [item for item in items if item.get("type") == "transaction" and "transaction" in item
                and item.get("request", {}).get("url", "").endswith(path)]

    (transaction,) = collector.wait_until(sentry_transactions)
    assert transaction["transaction"] == "/api/v1/documents/{pk}"
    assert transaction["contexts"]["response"]["status_code"] == 404
    assert transaction["contexts"]["trace"]["trace_id"] != server.trace_id  # two systems, not merged


@pytest.mark.django_db(transaction=True)
def test_a_document_saved_over_the_api_is_embedded_by_the_worker_in_the_same_trace(traced, collector):
    token = Token.objects.create(user=StaffFactory())
    response = httpx.post(traced.url + "/api/v1/documents", headers={"Authorization": f"Token {token.key}"},
                          json={"title": "Traced", "body": "Spans follow the document into the worker."})
    assert response.status_code == 201, response.text

    server = server_span(collector, method="POST", route="/api/v1/documents", path="/api/v1/documents")
    # The web process sent the task inside the request (on commit) ...
    (sent,) = collector.wait_for(lambda spans: [s for s in spans if s.trace_id == server.trace_id
                                                and s.kind == "PRODUCER"])
    assert sent.name == "apply_async/documents.embed_document"
    assert sent.parent_span_id == server.span_id
    # ... and the worker's run of it continues that trace, in another process.
    (run,) = collector.wait_for(lambda spans: [s for s in spans if s.trace_id == server.trace_id
                                               and s.kind == "CONSUMER"])
    assert run.name == "run/documents.embed_document"
    assert run.parent_span_id == sent.span_id
    assert run.resource["service.instance.id"] != server.resource["service.instance.id"]
    assert run.attributes["celery.task_name"] == "documents.embed_document"
    # The task's own SQL (the chunks it wrote) hangs under its run span.
    spans = collector.wait_for(lambda spans: [s for s in spans if s.scope == PSYCOPG and s.trace_id == run.trace_id
                                              and 'INSERT INTO documents_chunk' in s.attributes["db.statement"]])
    assert all(descends_from(span, run, collector.spans) for span in spans)


@pytest.mark.django_db(transaction=True)
def test_a_streamed_chat_answer_is_one_trace_with_its_prepared_statements_and_upstream_call(traced, collector,
                                                                                           fake_upstream):
    indexed_document(title="Tracing", body="Distributed tracing follows a request across processes.")
    fake_upstream.configure(tokens=4, token_delay=0.15)
    with httpx.Client(base_url=traced.url, timeout=10) as client:
        pk = client.post("/api/v1/chat/conversations", json={}).json()["id"]
        path = f"/api/v1/chat/conversations/{pk}/messages"
        arrivals, buffer = [], ""  # (time, event) as each event's last byte arrives
        with client.stream("POST", path, json={"question": "What does tracing follow?"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for text in response.iter_text():
                complete, _, buffer = (buffer + text).rpartition("\n\n")
                arrivals += [(time.monotonic(), kind) for kind, _ in parse_sse(complete)]
    kinds = [kind for _, kind in arrivals]
    assert kinds.count("token") == 4 and kinds[-1] == "done"
    first_token = next(t for t, kind in arrivals if kind == "token")
    assert arrivals[-1][0] - first_token > 0.3  # still streamed, not buffered by the wrapper

    server = server_span(collector, method="POST", route="/api/v1/chat/conversations/<int:pk>/messages", path=path)
    spans = collector.wait_for(lambda spans: [s for s in spans if s.trace_id == server.trace_id and s.kind == "CLIENT"
                                              and s.scope == "opentelemetry.instrumentation.aiohttp_client"])
    # The model call, to the fake upstream.
    (upstream,) = spans
    assert upstream.attributes["http.url"] == f"{fake_upstream.url}/chat/completions"
    assert descends_from(upstream, server, collector.spans)
    # The prepared statements of apps.core.db: retrieval (on the request's thread) and the
    # conversation's statement (on a thread pool of its own), both in the request's trace.
    statements = [s.attributes["db.statement"] for s in collector.trace(server.trace_id) if s.scope == PSYCOPG
                  and descends_from(s, server, collector.spans)]
    assert any(s.lstrip().startswith("WITH") and "documents_chunk" in s for s in statements), statements
    assert any("INSERT INTO chat_message" in s for s in statements), statements
    # The model call as Quire saw it (apps.core.spans): GenAI attributes and the ledger row's id.
    (call,) = collector.wait_for(lambda spans: [s for s in spans if s.trace_id == server.trace_id
                                                and s.scope == "quire"])
    answer = Message.objects.get(conversation_id=pk, role=Message.Role.ASSISTANT)
    assert call.name == "chat fake-model" and call.kind == "INTERNAL" and call.status == "UNSET"
    assert descends_from(call, server, collector.spans)
    assert server.start_ns <= call.start_ns <= call.end_ns <= server.end_ns
    assert call.attributes["gen_ai.provider.name"] == "openai"
    assert call.attributes["gen_ai.usage.output_tokens"] == answer.completion_tokens == 4
    assert call.attributes["quire.llm.call_id"] == answer.usage_record_id


@pytest.mark.django_db
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_worker_without_pool_children_traces_its_tasks(collector, pool):
    """The prefork pool's children start their traces on ``worker_process_init``; the threads
    pool (and gevent, eventlet) sends no such signal and runs tasks in the worker itself."""
    from config.celery_app import app

    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-traced-{pool}"
    env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="50",
                    CELERY_TASK_DEFAULT_QUEUE=queue)
    worker = WorkerProcess(queue=queue, env=env, name=f"traced-{pool}", pool=pool)
    task_id = str(uuid.uuid4())
    try:
        worker.start(timeout=60)
        result = app.send_task("core.ping", args=["traced"], queue=queue, task_id=task_id)
        assert result.get(timeout=30)["pong"] == "traced"
        (run,) = collector.wait_for(lambda spans: [s for s in spans if s.kind == "CONSUMER"
                                                   and s.attributes.get("messaging.message.id") == task_id])
    finally:
        worker.stop()
    assert run.name == "run/core.ping" and run.parent_span_id == ""
    assert run.resource["service.name"] == settings.OTEL_SERVICE_NAME


def test_the_wsgi_entry_is_traced_too(collector):
    """runserver serves config.wsgi: same server span, same route name, same SQL below it."""
    path = f"/api/v1/documents/{7_000_000 + os.getpid()}"
    code = f"""
from wsgiref.util import setup_testing_defaults
import config.wsgi
from apps.core import tracing
for path in ("{path}", "/healthz"):
    environ = {{"PATH_INFO": path}}
    setup_testing_defaults(environ)
    b"".join(config.wsgi.application(environ, lambda status, headers: None))
tracing.shutdown()
"""
    env = child_env(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    wsgi = [s for s in collector.spans if s.scope == "opentelemetry.instrumentation.wsgi"]
    (server,) = [s for s in wsgi if s.kind == "SERVER" and s.attributes["http.url"].endswith(path)]
    assert server.name == "GET /api/v1/documents/<pk>" and server.attributes["http.route"] == "/api/v1/documents/<pk>"
    assert server.scope == "opentelemetry.instrumentation.wsgi"
    assert [s for s in collector.trace(server.trace_id) if s.scope == PSYCOPG and s.parent_span_id == server.span_id
            and 'FROM "documents_document"' in s.attributes["db.statement"]]
    assert not [s for s in wsgi if s.attributes["http.url"].endswith("/healthz")]


def test_without_an_endpoint_nothing_is_set_up_or_patched():
    """The chat path's benchmarks run like this: no tracer provider, no wrapper, no patched
    driver, and none of our tracing code or the instrumentations even imported. (redis-py 8
    imports the SDK's metrics module by itself when it is installed, so the SDK as a whole
    is not absent; its trace part is.)"""
    env = {k: v for k, v in child_env().items() if k not in OTEL_VARIABLES}
    code = """
import json, sys
import config.asgi
from celery import signals
import config.celery_app
signals.worker_process_init.send(sender="test")  # what a pool child does first
import psycopg, redis, opentelemetry.trace
from apps.core import adb, db
from apps.core.logging import add_trace_ids
application = config.asgi.application
print(json.dumps({
    "imported": sorted(m for m in sys.modules if m == "apps.core.tracing" or m.startswith(
        ("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter"))),
    "tracer_provider": repr(opentelemetry.trace._TRACER_PROVIDER),
    "application": getattr(application, "__module__", type(application).__module__),
    "patched": [name for name, f in [("psycopg", psycopg.Connection.connect), ("redis", redis.Redis.execute_command)]
                if hasattr(f, "__wrapped__")],
    "statement_cursor": db.statement_cursor is psycopg.Cursor and adb.statement_cursor is psycopg.AsyncCursor,
    "log": add_trace_ids(None, "info", {"event": "x"}),
}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"imported": [], "tracer_provider": "None", "application": "apps.core.loops", "patched": [],
                      "statement_cursor": True, "log": {"event": "x"}}


def test_traces_start_only_where_work_enters():
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

    from apps.core.tracing import sampler

    def decision(ratio, kind, parent=None):
        return sampler(ratio).should_sample(parent, 0x1234, "span", kind).decision

    sampled_parent = set_span_in_context(NonRecordingSpan(SpanContext(0x1234, 0x99, is_remote=True,
                                                                      trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    for kind in (SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.PRODUCER):
        assert decision(1.0, kind) == Decision.RECORD_AND_SAMPLE
        assert decision(0.0, kind) == Decision.DROP  # OTEL_TRACES_SAMPLER_ARG=0
    # A client call outside any request or task (a background flush polling Redis) starts nothing ...
    assert decision(1.0, SpanKind.CLIENT) == Decision.DROP
    assert decision(1.0, SpanKind.INTERNAL) == Decision.DROP
    # ... inside one it follows the trace's decision, whatever the ratio.
    assert decision(0.0, SpanKind.CLIENT, sampled_parent) == Decision.RECORD_AND_SAMPLE


def test_endpoint_settings_follow_the_opentelemetry_rules():
    """The base endpoint gets /v1/traces, the traces endpoint is used as it is, a URL without
    a scheme is named at start-up, OTEL_SDK_DISABLED switches traces off."""
    code = """
import importlib, json, os, sys
from django.core.exceptions import ImproperlyConfigured
cases = {
    "base": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
    "traces": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/otlp"},
    "disabled": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
    "no scheme": {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318"},
    "ratio": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER_ARG": "2"},
}
out = {}
for name, variables in cases.items():
    os.environ.update(variables)
    sys.modules.pop("config.settings.base", None)
    try:
        s = importlib.import_module("config.settings.base")
        out[name] = [s.TRACING_ENABLED, s.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT]
    except ImproperlyConfigured as exc:
        out[name] = str(exc)
    for key in variables:
        del os.environ[key]
print(json.dumps(out))
"""
    env = {k: v for k, v in child_env().items() if not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["base"] == [True, "http://collector:4318/v1/traces"]
    assert out["traces"] == [True, "https://t.example/otlp"]
    assert out["disabled"] == [False, "http://collector:4318/v1/traces"]
    assert out["no scheme"].startswith("Environment variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is malformed")
    assert out["ratio"].startswith("Environment variable OTEL_TRACES_SAMPLER_ARG is malformed")
