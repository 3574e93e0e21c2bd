"""Chat pages: the conversation list and a thread, server-rendered; the question
is posted by ``static/js/chat.js`` to :func:`message_stream`, which answers with
server-sent events.

Anonymous readers chat too: their conversations belong to their session.
"""

from __future__ import annotations

import json
import time

from django.conf import settings
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from apps.chat import selectors, services
from apps.chat.streaming import is_extractive
from apps.chat.web import (
    REFUSALS,
    apply_session_and_user,
    embed_early,
    prepared_stream,
    question_from,
    refusal_response,
    session_key_for,
    settle_early,
    start_conversation,
)
from apps.llm.services import route_config

CONVERSATIONS_SHOWN = 50


def _llm_configured() -> bool:
    """Whether any provider of the chat route needs a model (else the extractive backend answers)."""
    return not all(is_extractive(link.provider) for link in route_config(settings.CHAT_ROUTE).chain)


def _page(request, conversation=None):
    session_key = session_key_for(request, create=False)
    conversations = selectors.conversation_list(user=request.user, session_key=session_key)[:CONVERSATIONS_SHOWN]
    messages = selectors.with_current_citations(selectors.message_list(conversation=conversation),
                                                user=request.user) if conversation else []
    for message in messages:
        message.citations_json = json.dumps(message.citations or [])  # chat.js links the [n] marks
    return render(request, "chat/chat.html", {
        "conversations": conversations,
        "conversation": conversation,
        "messages": messages,
        "llm_configured": _llm_configured(),
        "max_question_chars": settings.CHAT_MAX_QUESTION_CHARS,
    })


@require_http_methods(["GET", "POST"])
def chat_index(request):
    """GET: the list and an empty thread. POST: start a conversation (JSON for the script)."""
    if request.method == "GET":
        return _page(request)
    conversation = start_conversation(request)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": conversation.pk, "url": reverse("chat:thread", args=[conversation.pk]),
                             "messages_url": reverse("chat:messages", args=[conversation.pk])}, status=201)
    return redirect("chat:thread", conversation.pk)


def chat_thread(request, pk: int):
    conversation = selectors.conversation_get(conversation_id=pk, user=request.user,
                                              session_key=session_key_for(request, create=False))
    return _page(request, conversation)


@require_POST
def chat_delete(request, pk: int):
    conversation = selectors.conversation_get(conversation_id=pk, user=request.user,
                                              session_key=session_key_for(request, create=False))
    services.conversation_delete(conversation=conversation)
    return redirect("chat:index")


_csrf = CsrfViewMiddleware(lambda request: None)


async def _apply_request_middleware(request):
    """Sessions, auth and CSRF for a request that came through the lean handler
    (:mod:`apps.chat.asgi`), on the event loop (see :func:`apps.chat.web.apply_session_and_user`).
    Returns a response if the request must be refused."""
    await apply_session_and_user(request)
    _csrf.process_request(request)
    return _csrf.process_view(request, message_stream, (), {})


@require_POST
async def message_stream(request, pk: int):
    """``POST /chat/<id>/messages``: the answer as ``text/event-stream`` (see apps.chat.streaming).

    Errors found before streaming (limits, unknown conversation) come back as
    the JSON error envelope with their HTTP status, for the script to show.
    """
    started = time.perf_counter()
    # The query embedding needs nothing but the question: it runs (a task on this loop) while
    # the session and user are read and the limits checked. Without a session cookie the
    # request is refused there (nobody to own the conversation), so none is started; a
    # body too big to hold a valid question is parsed (and refused) there.
    query_vector = response = None
    try:
        question, query_vector = embed_early(request, credentials=settings.SESSION_COOKIE_NAME in request.COOKIES)
        response = await _apply_request_middleware(request)
        if response is None:  # else CSRF refused it
            # The conversation is looked up while its passages are retrieved (Http404 if it is not the caller's).
            response = await prepared_stream(request, started=started, conversation=pk, user=request.user,
                                             session_key=session_key_for(request, create=False),
                                             question=question_from(request) if question is None else question,
                                             query_vector=query_vector, address=request.META.get("REMOTE_ADDR"))
    except REFUSALS as exc:  # not the caller's conversation, a limit, a body Django refused to read
        response = refusal_response(exc, request)
    finally:
        settle_early(query_vector, response)
    return response
