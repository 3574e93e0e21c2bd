"""structlog configuration: JSON lines on stdout (console renderer for `make run`),
with the request id bound by :class:`apps.core.middleware.RequestIDMiddleware`
on every line of a request, including lines from stdlib loggers, and, when traces
are on, the ``trace_id`` and ``span_id`` of the span the line was written in."""

from __future__ import annotations

import logging

import structlog

# opentelemetry.trace.get_current_span once apps.core.tracing has started traces in this process.
_current_span = None


def log_trace_ids(current_span) -> None:
    """From now on, lines written inside a span carry its ids (called by :mod:`apps.core.tracing`)."""
    global _current_span
    _current_span = current_span


def add_trace_ids(_logger, _method_name, event_dict):
    """structlog processor: ``trace_id`` and ``span_id`` (hex, as trace backends show them)
    of the current span, so a log line and its trace find each other. One test when traces are off."""
    if _current_span is None:
        return event_dict
    span_context = _current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict


_SHARED = [
    structlog.contextvars.merge_contextvars,
    add_trace_ids,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def _configure_structlog() -> None:
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            # A line below its logger's level is dropped before any processor runs (the
            # timestamp and the rendering were costing a streamed answer ~0.5 ms of CPU
            # at LOG_LEVEL=WARNING).
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def build_formatter(fmt: str = "json") -> logging.Formatter:
    """Formatter factory referenced from settings.LOGGING."""
    _configure_structlog()
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
    else:
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_SHARED, processors=final)


def not_a_readiness_answer(record: logging.LogRecord) -> bool:
    """Filter for ``django.request``: drop its "Service Unavailable: /readyz" error.

    A 503 from ``/readyz`` is the probe's answer (warming up, a dependency down), not a
    server error; the view logs it itself as ``health.not_ready`` (warning) naming the
    failed checks. Otherwise every probe during a warm-up or an outage would be an ERROR
    line, and a Sentry event when Sentry is on.
    """
    request = getattr(record, "request", None)
    return not (getattr(record, "status_code", None) == 503 and getattr(request, "path", None) == "/readyz")


def get_logger(name: str):
    _configure_structlog()
    return structlog.get_logger(name)
