"""Request and response plumbing shared by the chat pages and the chat API."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse

from apps.chat.services import PreparedAnswer, conversation_create
from apps.chat.streaming import answer_events

SESSION_MARK = "quire_chat"


# Session data (unlike the session key, which login rotates) survives signing in:
# the ids of conversations started anonymously are kept here so they can be adopted.
SESSION_CONVERSATIONS = "quire_chat_conversations"


def start_conversation(request, *, title: str = ""):
    """Create a conversation for the caller; remember anonymous ones in the session."""
    conversation = conversation_create(user=request.user, session_key=session_key_for(request, create=True),
                                       title=title)
    if not request.user.is_authenticated:
        request.session[SESSION_CONVERSATIONS] = [*request.session.get(SESSION_CONVERSATIONS, []), conversation.pk]
    return conversation


def session_key_for(request, *, create: bool) -> str | None:
    """The anonymous caller's session key (created on demand so conversations can be scoped to it)."""
    session = request.session
    if session.session_key is None and create:
        session[SESSION_MARK] = True  # a modified session gets its cookie from SessionMiddleware
        session.save()
    return session.session_key


def event_stream_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """``text/event-stream`` over an async iterator (served incrementally under ASGI).

    ``Content-Encoding: identity`` keeps GZipMiddleware (if ever added) away: it
    skips responses that already declare an encoding, and a compressed stream
    would be buffered by the compressor.
    """
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    response["Content-Encoding"] = "identity"
    return response


def answer_response(prepared: PreparedAnswer, *, started: float | None = None) -> StreamingHttpResponse:
    return event_stream_response(answer_events(prepared, started=started or time.perf_counter()))
