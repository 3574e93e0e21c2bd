"""A lean path through Django for the chat streams: the page's (``POST /chat/<id>/messages``)
and the API's (``POST /api/v1/chat/conversations/<id>/messages``).

Under Django's regular ASGI handler every ``MiddlewareMixin`` middleware runs
its hooks in a thread, and each request gets its own ``ThreadSensitiveContext``
— a thread that lives as long as the request. For a stream that lasts a
minute, that is one parked OS thread per open answer. The stream views need
only three of those middlewares (sessions, auth, CSRF), so on this path they
apply them themselves, on the event loop (:func:`apps.chat.web.apply_session_and_user`;
CSRF: the page's view, or DRF's session authentication for the API), and the request goes
to the same lean handler the LLM proxy uses for ``/v1/`` (same URLconf, views and error
handlers; the request-id middleware, and Django's security middleware's hooks on the loop:
HTTPS redirect, HSTS, ``nosniff``). The other middlewares have nothing to do for this
response: it sets no cookie and is never framed (the host is still checked against
ALLOWED_HOSTS by the views). django-prometheus's request metrics are kept, on the loop
(apps.core.middleware.LoopPrometheusMiddleware), beside the chat's own.
"""

from __future__ import annotations

import re

from apps.llm.asgi import ProxyASGIHandler

# The chat page's stream and the chat API's (apps.chat.api.conversation_messages).
CHAT_STREAM_PATH = re.compile(r"^/(?:chat|api/v1/chat/conversations)/\d+/messages$")


def with_chat_stream_path(application):
    """Wrap the site's ASGI ``application`` so chat streams take the lean handler."""
    lean = ProxyASGIHandler()

    async def dispatch(scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST" and CHAT_STREAM_PATH.match(scope["path"]):
            return await lean(scope, receive, send)
        return await application(scope, receive, send)

    return dispatch
