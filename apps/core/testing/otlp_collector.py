"""A real OTLP/HTTP trace receiver on 127.0.0.1 (a random port), for tests: what an
OpenTelemetry collector would receive from Quire's processes, decoded.

It accepts ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` (gzip or
not), as the SDK's OTLP/HTTP exporter sends it, and keeps every span as a
:class:`ReceivedSpan`. Anything else posted (e.g. Sentry envelopes, when a test points
a DSN here) is answered 200 and kept in ``other``, by path.

    collector = FakeCollector().start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    ...
    server = collector.wait_for(lambda spans: [s for s in spans if s.kind == "SERVER"])
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str  # SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER
    trace_id: str  # hex, as trace backends and log lines show it
    span_id: str
    parent_span_id: str  # "" for a trace's root
    attributes: dict
    resource: dict  # service.name, service.version, process.pid, ...
    scope: str  # the instrumentation library that made the span
    status: str  # UNSET, OK, ERROR
    start_ns: int
    end_ns: int


@dataclass
class FakeCollector:
    host: str = "127.0.0.1"
    spans: list[ReceivedSpan] = field(default_factory=list, repr=False)
    other: dict[str, list[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it."""
        return f"http://{self.host}:{self.port}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> FakeCollector:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    collector._receive(ExportTraceServiceRequest.FromString(body))
                    answer, content_type = ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
                else:
                    with collector._changed:
                        collector.other.setdefault(self.path, []).append(body)
                        collector._changed.notify_all()
                    answer, content_type = b"{}", "application/json"
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-otlp-collector", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def wait_for(self, found: Callable[[list[ReceivedSpan]], object], timeout: float = 10.0):
        """Wait until ``found(spans)`` is truthy and return it; AssertionError naming the spans
        that did arrive if it never is."""
        try:
            return self.wait_until(lambda: found(list(self.spans)), timeout)
        except AssertionError:
            arrived = "\n".join(f"  {s.kind} {s.name} trace={s.trace_id} span={s.span_id} parent={s.parent_span_id}"
                                for s in self.spans)
            raise AssertionError(f"not received within {timeout} s; spans received:\n{arrived or '  none'}") from None

    def wait_until(self, check: Callable[[], object], timeout: float = 10.0):
        """Wait until ``check()`` is truthy (tried again whenever something arrives) and return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (result := check()):
                if time.monotonic() >= deadline:
                    raise AssertionError(f"not received within {timeout} s")
                self._changed.wait(max(0.0, min(0.5, deadline - time.monotonic())))
        return result

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    def _receive(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        name=span.name, kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        attributes=_attributes(span.attributes), resource=resource, scope=scope_spans.scope.name,
                        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    ))
        with self._changed:
            self.spans.extend(received)
            self._changed.notify_all()


def _attributes(key_values) -> dict:
    return {kv.key: _value(kv.value) for kv in key_values}


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind) if kind else None
