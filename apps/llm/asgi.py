"""A lean path through Django for the OpenAI-compatible endpoint.

Every ``MiddlewareMixin`` middleware in ``settings.MIDDLEWARE`` (sessions, CSRF,
auth, messages, django-prometheus ...) runs its hooks in a thread under ASGI,
which measured about 2 ms per request on this machine, more than the whole
latency budget of the proxy. ``/v1/`` is authenticated by API key, speaks
JSON, and has its own metrics, so it needs none of them: requests under
``/v1/`` go to a second Django ASGI handler (same URLconf, same views, same
error handlers) whose middleware chain is just :data:`PROXY_MIDDLEWARE`: django-prometheus's
request metrics, the request id, and Django's security middleware's hooks, all run on the loop
(HTTPS redirect, HSTS, ``nosniff``).

It also skips Django's per-request ``ThreadSensitiveContext``, which starts
(and joins) a new thread for every request's sync work. The views under
``/v1/`` are async; their little sync work (signal receivers, an API key or
budget lookup on a cache miss) runs on asgiref's one shared sync thread.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.utils.module_loading import import_string

from apps.core.exceptions import database_unavailable_response

PROXY_PREFIX = "/v1/"
PROXY_MIDDLEWARE = ("apps.core.middleware.LoopPrometheusMiddleware", "apps.core.middleware.RequestIDMiddleware",
                    "apps.core.middleware.LoopSecurityMiddleware")


class ProxyASGIHandler(ASGIHandler):
    """Django's ASGI handler with only :data:`PROXY_MIDDLEWARE` (all async-capable)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = [database_unavailable_response]  # a 503 when the database is unreachable
        handler = convert_exception_to_response(self._get_response_async)
        for path in reversed(PROXY_MIDDLEWARE):
            middleware = import_string(path)
            if not getattr(middleware, "async_capable", False):
                raise ImproperlyConfigured(f"{path} must be async-capable to run on the /v1/ path")
            handler = convert_exception_to_response(middleware(handler))
        self._middleware_chain = handler


def with_proxy_path(application):
    """Wrap the site's ASGI ``application`` so that ``/v1/`` takes the lean handler."""
    lean = ProxyASGIHandler()

    async def dispatch(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROXY_PREFIX):
            return await lean(scope, receive, send)
        return await application(scope, receive, send)

    return dispatch
