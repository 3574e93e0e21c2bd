"""structlog configuration: JSON lines on stdout (console renderer for `make run`),
with the request id bound by :class:`apps.core.middleware.RequestIDMiddleware`
on every line of a request, including lines from stdlib loggers."""

from __future__ import annotations

import logging

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
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
