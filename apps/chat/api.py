"""Chat API: the caller's own conversations and messages, and the streamed answer.

Signed-in callers (session or token) own their conversations; anonymous callers
are scoped to their session cookie. Someone else's conversation is a 404.
"""

from __future__ import annotations

import functools
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import generics, permissions, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.chat import selectors, services
from apps.chat.models import Conversation
from apps.chat.serializers import (
    CitationsEventSerializer,
    ConversationCreateSerializer,
    ConversationDetailSerializer,
    ConversationSerializer,
    DoneEventSerializer,
    ErrorEventSerializer,
    MessageSerializer,
    MetaEventSerializer,
    QuestionSerializer,
    TokenEventSerializer,
)
from apps.chat.web import (
    apply_session_and_user,
    embed_early,
    prepared_stream,
    session_key_for,
    settle_early,
    start_conversation,
)
from apps.core.adb import run_sync
from apps.core.schema import ErrorEnvelopeSerializer

STREAM_DESCRIPTION = """\
Asks a question in the conversation and streams the answer as **server-sent events**
(`text/event-stream`). Each event is `event: <type>` followed by one `data:` line of JSON:

| event | when | data |
|---|---|---|
| `meta` | first | `MetaEvent`: the saved message id and the sources (passages the caller may see) |
| `token` | per piece of the answer | `TokenEvent`: `text` to append |
| `citations` | after the last token | `CitationsEvent`: the sources cited (`[n]` pointing at no source: dropped) |
| `done` | last, on success | `DoneEvent`: usage, cost (USD, from the ledger), timings, provider |
| `error` | last, on failure | `ErrorEvent`: `code`, `message`; saved as `partial` (`error` if nothing was said) |

Lines starting with `:` are heartbeats (every 15 s of silence). The stream ends after a
maximum duration. Closing the connection cancels the upstream model call and saves the
answer so far as `partial`. Limits (question length, questions per conversation, questions
per minute) are answered *before* streaming, as a JSON error envelope (400, 409, 429).
"""

STREAM_EXAMPLE = (
    'event: meta\ndata: {"message_id": 12, "conversation_id": 3, "sources": [{"n": 1, "document_id": 7, '
    '"chunk_id": 40, "title": "Tides", "url": "/d/tides/"}]}\n\n'
    'event: token\ndata: {"text": "Tides are caused by the Moon "}\n\n'
    'event: token\ndata: {"text": "[1]."}\n\n'
    'event: citations\ndata: {"citations": [{"n": 1, "document_id": 7, "chunk_id": 40, "title": "Tides", '
    '"url": "/d/tides/"}]}\n\n'
    'event: done\ndata: {"message_id": 12, "status": "complete", "provider": "openai", "model": "gpt-4o-mini", '
    '"extractive": false, "cached": false, "usage": {"prompt_tokens": 812, "completion_tokens": 9}, '
    '"cost": "0.00012720", "ttft_ms": 412.5, "latency_ms": 655.1, "upstream_ttft_ms": 405.2}\n\n'
)

STREAM_EVENT = PolymorphicProxySerializer(
    component_name="ChatStreamEvent",
    serializers=[MetaEventSerializer, TokenEventSerializer, CitationsEventSerializer, DoneEventSerializer,
                 ErrorEventSerializer],
    resource_type_field_name=None,
)
ERRORS = {
    (404, "application/json"): OpenApiResponse(ErrorEnvelopeSerializer, description="Not your conversation."),
}


class ChatAPIMixin:
    permission_classes = [permissions.AllowAny]

    def session_key(self, *, create: bool = False) -> str | None:
        if self.request.user.is_authenticated:
            return None
        return session_key_for(self.request, create=create)

    def get_conversation(self):
        return selectors.conversation_get(conversation_id=self.kwargs["pk"], user=self.request.user,
                                          session_key=self.session_key())


@extend_schema(tags=["chat"])
class ConversationListAPI(ChatAPIMixin, generics.GenericAPIView):
    serializer_class = ConversationSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Conversation.objects.none()
        return selectors.conversation_list(user=self.request.user, session_key=self.session_key())

    @extend_schema(summary="Your conversations, most recent first", responses=ConversationSerializer(many=True))
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ConversationSerializer(page, many=True).data)

    @extend_schema(summary="Start a conversation", request=ConversationCreateSerializer,
                   responses={201: ConversationSerializer})
    def post(self, request):
        data = ConversationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = start_conversation(request, title=data.validated_data["title"])
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["chat"])
class ConversationDetailAPI(ChatAPIMixin, APIView):
    @extend_schema(summary="A conversation with its messages",
                   responses={200: ConversationDetailSerializer, **ERRORS})
    def get(self, request, pk: int):
        conversation = self.get_conversation()
        conversation.shown_messages = selectors.with_current_citations(
            selectors.message_list(conversation=conversation), user=request.user)
        conversation.message_count = len(conversation.shown_messages)
        return Response(ConversationDetailSerializer(conversation).data)

    @extend_schema(summary="Delete a conversation and its messages", responses={204: None, **ERRORS})
    def delete(self, request, pk: int):
        services.conversation_delete(conversation=self.get_conversation())
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["chat"])
class ConversationMessagesAPI(ChatAPIMixin, generics.GenericAPIView):
    serializer_class = MessageSerializer

    def perform_content_negotiation(self, request, force=False):
        # Streaming clients send `Accept: text/event-stream`; errors before the stream are JSON.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(summary="The messages of a conversation, oldest first",
                   responses={200: MessageSerializer(many=True), **ERRORS})
    def get(self, request, pk: int):
        page = self.paginate_queryset(selectors.message_list(conversation=self.get_conversation()))
        page = selectors.with_current_citations(page, user=request.user)
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(
        summary="Ask a question; the answer streams back as server-sent events",
        description=STREAM_DESCRIPTION,
        request=QuestionSerializer,
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                STREAM_EVENT, description="A stream of `meta`, `token`…, `citations`, `done` | `error` events.",
                examples=[OpenApiExample("A short answer", value=STREAM_EXAMPLE, media_type="text/event-stream")],
            ),
            (400, "application/json"): OpenApiResponse(ErrorEnvelopeSerializer,
                                                       description="Empty or too long question."),
            **ERRORS,
            (409, "application/json"): OpenApiResponse(ErrorEnvelopeSerializer,
                                                       description="The conversation is full."),
            (429, "application/json"): OpenApiResponse(ErrorEnvelopeSerializer,
                                                       description="Too many questions this minute."),
        },
    )
    def post(self, request, pk: int):
        # Authenticated, throttled (DRF, before this method) and validated here; the answer is
        # prepared and streamed by conversation_messages, on the event loop.
        started = time.perf_counter()
        data = QuestionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return QuestionAccepted(question=data.validated_data["question"], user=request.user,
                                session_key=self.session_key(), started=started)


class QuestionAccepted(HttpResponse):
    """What :meth:`ConversationMessagesAPI.post` returns for a question DRF let through (never
    sent): :func:`conversation_messages` then prepares the answer on the event loop, as the
    page's question is (:func:`apps.chat.services.aanswer_prepare`: the conversation is checked,
    404 if it is not the caller's, and its rows written while the passages are retrieved), and
    answers with the stream, or with the envelope of a refusal."""

    def __init__(self, *, question: str, user, session_key: str | None, started: float):
        super().__init__(status=202)
        self.question, self.user, self.session_key, self.started = question, user, session_key, started

    async def answer(self, request, pk: int, query_vector) -> HttpResponseBase:
        response = await prepared_stream(request, started=self.started, conversation=pk, user=self.user,
                                         session_key=self.session_key, question=self.question,
                                         query_vector=query_vector, address=request.META.get("REMOTE_ADDR"))
        if response.streaming:
            for header in ("Allow", "Vary"):  # what DRF's view added
                if header in self:
                    response[header] = self[header]
        return response


_messages_api = ConversationMessagesAPI.as_view()


def _rendered(view, request, **kwargs):
    """``view``'s response, rendered if it is DRF's (a refusal's envelope): in the view's thread,
    not in the extra thread hop Django's handler would make for it."""
    response = view(request, **kwargs)
    if callable(getattr(response, "render", None)):
        response.render()
    return response


# functools.wraps keeps the DRF view's attributes (cls, initkwargs, csrf_exempt): the schema
# documents this URL from ConversationMessagesAPI, and CSRF stays DRF's to check.
@functools.wraps(_messages_api)
async def conversation_messages(request, pk: int):
    """``/api/v1/chat/conversations/<pk>/messages``: :class:`ConversationMessagesAPI`, entered on
    the event loop.

    A question (POST) usually comes through the lean handler (:mod:`apps.chat.asgi`), as the
    chat page's does: no middleware thread, and no thread kept for the request's lifetime (Django's
    regular handler keeps one per request until the response ends; for a streamed answer,
    minutes). The session and the user are read here on the loop, then the DRF view
    (authentication by token or session with its CSRF check, throttles, validation) runs in a
    pooled thread (:func:`apps.core.adb.run_sync`), free again as soon as it has accepted or
    refused the question; the answer is prepared back on the loop (:class:`QuestionAccepted`).
    Other methods are the DRF view's as usual.
    """
    if request.method != "POST":
        return await sync_to_async(_messages_api)(request, pk=pk)
    # The query embedding needs nothing but the question: it runs (a task on this loop) while
    # the caller is authenticated, throttled and checked, as on the page. Only a caller with
    # credentials (a session cookie, an Authorization header) and a JSON body that can hold a
    # valid question gets one started.
    credentials = settings.SESSION_COOKIE_NAME in request.COOKIES or "authorization" in request.headers
    _, query_vector = embed_early(request, credentials=credentials and request.content_type == "application/json")
    response = None
    try:
        await apply_session_and_user(request)
        response = await run_sync(_rendered, _messages_api, request, pk=pk)
        if isinstance(response, QuestionAccepted):
            response = await response.answer(request, pk, query_vector)
    finally:
        settle_early(query_vector, response)
    return response
