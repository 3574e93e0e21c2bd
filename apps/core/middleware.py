"""Request id on every log line of a request and in the ``X-Request-ID`` header; Django's
security headers on the lean handlers' responses."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.middleware.security import SecurityMiddleware

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
