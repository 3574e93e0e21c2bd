"""Request and response plumbing shared by the chat pages and the chat API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from importlib import import_module

from django.conf import settings
from django.contrib.auth import aget_user
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from rest_framework.exceptions import APIException

from apps.chat import services
from apps.chat.early import EARLY
from apps.chat.services import PreparedAnswer, conversation_create
from apps.chat.streaming import answer_events
from apps.core import parsers
from apps.core.exceptions import envelope, error_response, refused_request_error

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


async def apply_session_and_user(request) -> None:
    """What SessionMiddleware and AuthenticationMiddleware give a view, for a request that came
    through the lean handler (:mod:`apps.chat.asgi`), on the event loop: the session and the
    user are read by ``aget_user`` (``apps.core.sessions`` and ``apps.core.auth`` run those reads
    on the loop's own pool). The host is checked against ALLOWED_HOSTS, as CommonMiddleware
    would (DisallowedHost: 400). What the regular middleware already did is reused."""
    request.get_host()
    if not hasattr(request, "session"):
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    # AuthenticationMiddleware's lazy ``request.user`` would read in a synchronous call.
    request.user = await (request.auser() if hasattr(request, "auser") else aget_user(request))


# What get_host() and build_absolute_uri() read, and the request line: kept by forget_request_state.
_META_KEPT = ("HTTP_HOST", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "SERVER_NAME", "SERVER_PORT",
              "REMOTE_ADDR", "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING")


def forget_request_state(request) -> None:
    """Let go of what the stream no longer needs from the request (the handler keeps the
    request itself until the stream ends): the session and its decoded data, the user
    (``prepared`` has it) and DRF's ``auth`` (the API token's row), the resolved URL, and the
    request's headers, cookies and body in all their parsed forms, about 4 KB per open stream. What is read after the view returns
    stays: ``method``, ``path`` and ``request_id`` (the request-id middleware's log line),
    what ``get_host()`` and ``build_absolute_uri()`` read (an error report sent to Sentry
    during the stream names the URL), the body's stream (``close()`` at the end closes it)
    and the ASGI scope (uvicorn, tracing)."""
    for name in ("session", "user", "auth", "_cached_user", "auser", "_acached_user", "resolver_match", "COOKIES",
                 "headers", "_post", "_files", "_body"):
        request.__dict__.pop(name, None)
    request.META = {name: request.META[name] for name in _META_KEPT if name in request.META}


def question_from(request):
    """The question as sent (a JSON body's may be any type: ``limits.check_question`` says what is wrong)."""
    if request.content_type == "application/json":
        try:
            body = parsers.loads(request.body or b"{}")
        except ValueError:
            return ""
        return body.get("question", "") if isinstance(body, dict) else ""
    return request.POST.get("question", "")


def readable_early(request) -> bool:
    """Whether the body may be read before the caller is authenticated, to start the question's
    query embedding meanwhile: its declared size could hold a valid question (a bigger one, or
    one of unknown size, is read and refused by the view as usual)."""
    try:
        length = int(request.META["CONTENT_LENGTH"])
    except (KeyError, ValueError):
        return False
    # The largest body that can hold a question of CHAT_MAX_QUESTION_CHARS (JSON-escaped).
    return length <= settings.CHAT_MAX_QUESTION_CHARS * 6 + 1024


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


# What a question may be refused with before its stream starts: not the caller's conversation, a
# limit or an invalid question (APIException), a body Django would not read (SuspiciousOperation).
REFUSALS = (Http404, APIException, SuspiciousOperation)


def refusal_response(exc: Exception, request) -> JsonResponse:
    """The JSON envelope answering one of :data:`REFUSALS` (the stream's script and API clients
    read it), with its status."""
    if isinstance(exc, Http404):
        return JsonResponse(envelope("not_found", "No such conversation.", request=request), status=404)
    if isinstance(exc, SuspiciousOperation):
        return error_response(refused_request_error(exc), request)
    return error_response(exc, request)


def answer_response(prepared: PreparedAnswer, *, started: float | None = None) -> StreamingHttpResponse:
    return event_stream_response(answer_events(prepared, started=started or time.perf_counter()))


def embed_early(request, *, credentials: bool) -> tuple[str | None, asyncio.Task | None]:
    """The question, read before the caller is checked, and its query embedding started (a task
    on this loop) to run meanwhile; ``(None, None)`` unless the caller brings ``credentials``
    (without them it is refused or owns nothing: no embedding to overlap) and the body's
    declared size can hold a valid question; ``(question, None)`` if the process's bound on
    such embeddings says not now (:mod:`apps.chat.early`). Pass the task to
    :func:`prepared_stream`, and to :func:`settle_early` once done."""
    if not (credentials and readable_early(request)):
        return None, None
    question = question_from(request)
    return question, EARLY.start(question)


def settle_early(query_vector: asyncio.Task | None, response: HttpResponseBase | None) -> None:
    """An early embedding's end: cancelled if never read, and counted against the process's
    bound unless the question's answer is streaming (``response``; None if the view raised)."""
    EARLY.settle(query_vector, answered=isinstance(response, StreamingHttpResponse))


async def prepared_stream(request, *, started: float, **prepare) -> HttpResponseBase:
    """:func:`apps.chat.services.aanswer_prepare` with ``prepare``, then the answer's stream,
    having let go of the request's state the stream does not need; the refusal's envelope if
    the question is refused (the chat page's and the API's questions alike)."""
    try:
        prepared = await services.aanswer_prepare(**prepare)
    except REFUSALS as exc:
        return refusal_response(exc, request)
    forget_request_state(request)  # the handler keeps the request as long as the stream lasts
    return answer_response(prepared, started=started)
