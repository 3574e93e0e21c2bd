"""OpenTelemetry traces: a request, its SQL, Redis and upstream calls, and the Celery task
it queued, in one trace, exported over OTLP/HTTP.

Import this module only when ``settings.TRACING_ENABLED`` (an OTLP endpoint is set):
it imports the SDK. When traces are off nothing of OpenTelemetry is imported and nothing
is patched, so the request path costs what it did.

:func:`setup` runs once per process, before Django opens a connection or a client:

- a ``TracerProvider`` with the service's resource (``service.name``, ``service.version``,
  ``deployment.environment``), the :func:`sampler`, and a ``BatchSpanProcessor`` exporting
  OTLP/HTTP protobuf from a thread of its own;
- library instrumentations: psycopg (every connection of Django's pool, and the prepared
  statements of :mod:`apps.core.db`, which bypass the connection's cursor factory), redis,
  celery (publish and run, the trace context travelling in the message headers), httpx
  (the embedding HTTP backend) and the aiohttp client (LLM upstream calls); work handed to
  a ``ThreadPoolExecutor`` keeps the span it was submitted from;
- log lines written inside a span carry its ids (:func:`apps.core.logging.add_trace_ids`);
- spans Quire writes itself (:mod:`apps.core.spans`: each LLM call, with the GenAI semantic
  conventions' attributes) go through :class:`SpanRecorder`.

The server span comes from :func:`instrument_asgi` (or :func:`instrument_wsgi`), which wraps
the whole application, so the lean ``/v1/`` and chat-stream paths, which bypass Django's
middleware, are traced like every other request. Callers: config/asgi.py and config/wsgi.py
for web processes, config/celery_app.py in each pool child (an exporter thread does not
survive a fork), or in the worker itself when its pool has no children (threads, gevent,
eventlet). Management commands do not trace.
"""

from __future__ import annotations

import re
import threading
import tomllib

import psycopg
from django.conf import settings
from django.urls import resolve
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ASGITracing
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.psycopg import (
    DatabaseApiAsyncIntegration,
    DatabaseApiIntegration,
    PsycopgInstrumentor,
    _new_cursor_async_factory,
    _new_cursor_factory,
)
from opentelemetry.instrumentation.psycopg.version import __version__ as psycopg_instrumentation_version
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WSGITracing
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import parse_excluded_urls, sanitize_method

from apps.core import adb, db, spans
from apps.core.logging import get_logger, log_trace_ids

logger = get_logger("quire.tracing")

# Probes, scrapes and static files: every few seconds, nothing to follow.
UNTRACED_PATHS = parse_excluded_urls("/healthz$,/readyz$,/metrics$,/static/")
# Span kinds that may start a trace: work entering this service (a request, a task run) or
# leaving it for another of its processes (a task sent by a process with no span open).
ENTRY_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.PRODUCER})

_provider: TracerProvider | None = None
_lock = threading.Lock()


def setup() -> TracerProvider:
    """Start traces in this process (once; later calls return the same provider)."""
    global _provider
    with _lock:
        if _provider is None:
            _provider = _start()
    return _provider


def shutdown() -> None:
    """Export what is still queued and stop (a process about to exit without running atexit)."""
    if _provider is not None:
        _provider.shutdown()


class EntryPointSampler(Sampler):
    """Samples spans with no parent only where work enters (:data:`ENTRY_KINDS`), at ``ratio``.

    A client span with no parent is background work outside any request or task (the web
    process's ledger flush polling Redis twice a second, a pool growing by a connection): a
    trace of its own each time would bury the traces operators look for.
    """

    def __init__(self, ratio: float):
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        if kind not in ENTRY_KINDS:
            return SamplingResult(Decision.DROP)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"EntryPointSampler{{{self._ratio.get_description()}}}"


def sampler(ratio: float) -> Sampler:
    """A trace is kept or not where it starts (:class:`EntryPointSampler`); every span below,
    in this process or another (a task, via its message headers), follows that decision."""
    return ParentBased(root=EntryPointSampler(ratio))


def instrument_asgi(application):
    """``application`` inside an OpenTelemetry server span per request.

    Spans are named by the Django route (``POST /chat/<int:pk>/messages``), not the path, and
    carry ``http.route``. No span per ASGI message: a streamed answer would add one per token.
    """
    return ASGITracing(application, excluded_urls=UNTRACED_PATHS, default_span_details=_asgi_span_details,
                       server_request_hook=_redact_asgi_query, tracer_provider=setup(),
                       exclude_spans=["receive", "send"])


def instrument_wsgi(application):
    """:func:`instrument_asgi` for the WSGI entry (``runserver``)."""
    traced = WSGITracing(application, request_hook=_name_wsgi_span, tracer_provider=setup())

    def dispatch(environ, start_response):
        if UNTRACED_PATHS.url_disabled(environ.get("PATH_INFO", "")):
            return application(environ, start_response)
        return traced(environ, start_response)

    return dispatch


# A regex route's named group, e.g. DRF's ``(?P<pk>\d+)`` (one level of nested parentheses).
_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")


def route_of(path: str) -> str | None:
    """The URL pattern ``path`` resolves to, as a template: ``/api/v1/documents/<pk>``."""
    try:
        route = resolve(path).route
    except Exception:  # a 404 (or a path Django cannot resolve) has no route
        return None
    return "/" + _NAMED_GROUP.sub(r"<\1>", route).replace("^", "").replace("$", "")


def _span_name(method: str, route: str | None) -> str:
    method = sanitize_method(method.strip())
    method = "HTTP" if method == "_OTHER" else method
    return f"{method} {route}" if route else method


def _asgi_span_details(scope) -> tuple[str, dict]:
    route = route_of(scope.get("path", ""))
    return _span_name(scope.get("method", ""), route), ({"http.route": route} if route else {})


def _name_wsgi_span(span, environ) -> None:
    route = route_of(environ.get("PATH_INFO", ""))
    span.update_name(_span_name(environ.get("REQUEST_METHOD", ""), route))
    if route:
        span.set_attribute("http.route", route)
    _redact_query(span, environ.get("QUERY_STRING", ""))


# Span attributes that hold the request's query string (old and stable HTTP conventions).
_QUERY_ATTRIBUTES = ("http.target", "http.url", "url.query", "url.full")


def redacted_query(query: str) -> str:
    """``query`` with every value replaced by ``REDACTED`` (the parameter names stay)."""
    names = [part.split("=", 1)[0] for part in query.split("&") if part]
    return "&".join(f"{name}=REDACTED" for name in names)


def _redact_query(span, query: str) -> None:
    """What readers search for and ask (``/search?q=...``) stays out of the trace backend:
    operators see which parameters a request had, not their values."""
    if not query or not span.is_recording():
        return
    redacted = redacted_query(query)
    for key in _QUERY_ATTRIBUTES:
        value = span.attributes.get(key)
        if isinstance(value, str) and (key == "url.query" or "?" in value):
            # The instrumentation may have unquoted it: everything after the "?" is the query.
            span.set_attribute(key, redacted if key == "url.query" else value.split("?", 1)[0] + "?" + redacted)


def _redact_asgi_query(span, scope) -> None:
    _redact_query(span, (scope.get("query_string") or b"").decode("latin-1"))


def _start() -> TracerProvider:
    provider = TracerProvider(resource=_resource(), sampler=sampler(settings.OTEL_TRACES_SAMPLER_ARG))
    # Headers, timeout, compression and batching follow the SDK's standard OTEL_* variables.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)))
    trace.set_tracer_provider(provider)
    for instrumentor in (PsycopgInstrumentor(), RedisInstrumentor(), CeleryInstrumentor(), HTTPXClientInstrumentor(),
                         AioHttpClientInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)
        if not instrumentor.is_instrumented_by_opentelemetry:  # it logged why (a version it does not support)
            logger.warning("tracing.not_instrumented", instrumentation=type(instrumentor).__name__)
    # Executor work only: wrapping Thread.start too would give a thread started inside a request
    # (psycopg's pool workers) that request's trace for the rest of its life.
    ThreadingInstrumentor._instrument_thread_pool()
    db.statement_cursor = _traced_statement_cursor(provider)
    adb.statement_cursor = _traced_statement_cursor(provider, asynchronous=True)
    log_trace_ids(trace.get_current_span)
    spans.recorder = SpanRecorder(provider)
    return provider


class SpanRecorder:
    """Writes :mod:`apps.core.spans`' spans (instrumentation scope ``quire``)."""

    def __init__(self, provider: TracerProvider):
        self.tracer = provider.get_tracer("quire", _service_version())

    def current(self):
        return otel_context.get_current()

    def record(self, name: str, *, parent, start_ns: int, end_ns: int, attributes: dict,
               error: str | None = None) -> None:
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.INTERNAL, start_time=start_ns,
                                      attributes={k: v for k, v in attributes.items() if v is not None})
        if error:
            span.set_status(Status(StatusCode.ERROR, error[:500]))
        span.end(end_time=end_ns)


def _resource() -> Resource:
    attributes = {"deployment.environment": settings.ENVIRONMENT, "deployment.environment.name": settings.ENVIRONMENT}
    version = _service_version()
    if version:
        attributes["service.version"] = version
    # Resource.create adds the SDK's attributes and OTEL_RESOURCE_ATTRIBUTES (which may set
    # service.version to a build's commit, say); service.name is this setting.
    return Resource(attributes).merge(Resource.create({"service.name": settings.OTEL_SERVICE_NAME}))


def _service_version() -> str | None:
    try:
        with open(settings.BASE_DIR / "pyproject.toml", "rb") as fh:
            return tomllib.load(fh)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def _traced_statement_cursor(provider: TracerProvider, *, asynchronous: bool = False) -> type:
    """psycopg's server-binding cursor (``AsyncCursor`` for apps.core.adb), traced as the
    instrumentation traces the pool's connections (whose cursor factory is Django's
    client-binding cursor, which apps.core.db does not use)."""
    integration_class = DatabaseApiAsyncIntegration if asynchronous else DatabaseApiIntegration
    integration = integration_class(
        PsycopgInstrumentor.__module__, PsycopgInstrumentor._DATABASE_SYSTEM,
        connection_attributes=PsycopgInstrumentor._CONNECTION_ATTRIBUTES, version=psycopg_instrumentation_version,
        tracer_provider=provider, connect_module=psycopg,
    )
    if asynchronous:
        traced = _new_cursor_async_factory(db_api=integration, base_factory=psycopg.AsyncCursor)
    else:
        traced = _new_cursor_factory(db_api=integration, base_factory=psycopg.Cursor)

    class TracedStatementCursor(traced):
        def __init__(self, connection, *args, **kwargs):
            super().__init__(connection, *args, **kwargs)
            if not integration.connection_props:  # db.name, server.address: one database for the pool
                integration.get_connection_attributes(connection)

    return TracedStatementCursor
