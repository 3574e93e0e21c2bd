"""Request id on every log line of a request and in the ``X-Request-ID`` header; Django's
security headers and django-prometheus's request metrics on the lean handlers' responses; a 503,
not a 500, when a view cannot reach the database."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.middleware.security import SecurityMiddleware
from django.utils.deprecation import MiddlewareMixin
from django_prometheus.middleware import Metrics, PrometheusAfterMiddleware
from django_prometheus.utils import Time, TimeSince

from apps.core.exceptions import database_unavailable_response
from apps.core.logging import get_logger

logger = get_logger("quire.request")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _request_id(request) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    # Honour a caller's id only if it is safe to echo into logs and headers.
    return incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex


class RequestIDMiddleware:
    """Sync and async capable, so streaming (SSE) views stay async under ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    def _start(self, request):
        request.request_id = _request_id(request)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request.request_id)
        return time.perf_counter()

    def _finish(self, request, response, started):
        response["X-Request-ID"] = request.request_id
        if not request.path.startswith(("/metrics", "/healthz", "/static/")):
            logger.info(
                "request",
                method=request.method,
                path=request.path,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return response

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        started = self._start(request)
        return self._finish(request, self.get_response(request), started)

    async def __acall__(self, request):
        started = self._start(request)
        response = await self.get_response(request)
        return self._finish(request, response, started)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A view that could not reach the database answers 503 with ``Retry-After``
    (:func:`apps.core.exceptions.database_unavailable_response`). Only ``process_exception``: on
    the event loop a request that raises nothing costs no thread hop. The lean handlers
    (apps.llm.asgi) call the same function."""

    def process_exception(self, request, exception):
        return database_unavailable_response(request, exception)


class LoopSecurityMiddleware:
    """Django's SecurityMiddleware (the HTTPS redirect, HSTS, ``nosniff``, the referrer and
    cross-origin opener policies) for the lean handlers (apps.llm.asgi, apps.chat.asgi), on the
    event loop. Its two hooks only read settings and headers, so they are called here directly,
    without the thread hop ``MiddlewareMixin`` makes for each under ASGI."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)  # its settings and hooks, not its __call__
        markcoroutinefunction(self)

    async def __call__(self, request):
        response = self.security.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.security.process_response(request, response)


class LoopPrometheusMiddleware:
    """django-prometheus's request and response metrics (the ``django_http_*`` families its two
    middlewares keep) for the lean handlers, on the event loop: a dashboard built on them sees
    ``/v1/`` and the chat streams too, not only the pages and the API. Its middlewares are
    ``MiddlewareMixin`` ones (a thread hop per hook under ASGI); their hooks only read the
    request and response, so they are called here directly, as :class:`LoopSecurityMiddleware`
    does. A stream's latency is its time to the response headers, as django-prometheus
    measures it on the other paths."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.metrics = Metrics.get_instance()
        self.after = PrometheusAfterMiddleware(get_response)  # its labels and hooks, not its __call__
        markcoroutinefunction(self)

    async def __call__(self, request):
        self.metrics.requests_total.inc()
        started = Time()
        self.after.process_request(request)
        response = await self.get_response(request)
        if getattr(request, "resolver_match", None) is not None:  # resolved: the view is known now
            self.after.process_view(request, None)
        self.after.process_response(request, response)
        self.metrics.responses_total.inc()
        self.metrics.requests_latency_before.observe(TimeSince(started))
        return response
