"""Writes of the chat app and the synchronous half of answering a question.

Answering happens in two halves. :func:`answer_prepare` (synchronous, one
transaction) checks the limits, retrieves passages under the asking user's
visibility, builds the prompt and saves the question plus an assistant message
in state ``partial``; :mod:`apps.chat.streaming` then streams the answer and
:func:`answer_finish` records how it ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.chat import limits, selectors
from apps.chat.models import Conversation, Message
from apps.chat.prompts import Prompt, PromptPassage, build_prompt
from apps.core.logging import get_logger
from apps.documents.selectors import visibility_scope
from apps.search.services import retrieve_passages

logger = get_logger("quire.chat")
TITLE_CHARS = 80


@dataclass
class PreparedAnswer:
    conversation_id: int
    question_id: int
    message_id: int
    question: str
    prompt: Prompt
    route: str
    user: object  # the asking user (AnonymousUser for anonymous readers)
    scope: str  # the cache permission scope of ``user``
    prepare_ms: float | None = None  # request received -> ready to call the model (limits, retrieval, rows)

    @property
    def sources(self) -> list[dict]:
        return [p.source() for p in self.prompt.passages]


def conversation_create(*, user, session_key: str | None, title: str = "") -> Conversation:
    """A new conversation owned by ``user``, or by the anonymous ``session_key``."""
    signed_in = user is not None and user.is_authenticated
    if not signed_in and not session_key:
        raise ValueError("an anonymous conversation needs a session key")
    conversation = Conversation(owner=user if signed_in else None,
                                session_key="" if signed_in else session_key, title=title[:200])
    conversation.full_clean()
    conversation.save()
    return conversation


@transaction.atomic
def conversations_adopt(*, user, conversation_ids: list[int]) -> int:
    """Give a reader who just signed in the anonymous conversations of their session.

    Only ids the session itself recorded are passed in, and only conversations that
    still have no owner move, so nobody can claim someone else's thread.
    """
    if not conversation_ids or user is None or not user.is_authenticated:
        return 0
    moved = Conversation.objects.filter(pk__in=conversation_ids, owner__isnull=True).update(
        owner=user, session_key="", updated_at=timezone.now())
    if moved:
        logger.info("chat.conversations_adopted", user_id=user.pk, count=moved)
    return moved


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


def _passages(*, question: str, user) -> list[PromptPassage]:
    found = retrieve_passages(query=question, user=user, limit=settings.CHAT_RETRIEVAL_LIMIT,
                              mode=settings.CHAT_RETRIEVAL_MODE)
    return [
        PromptPassage(n=n, document_id=p.document_id, chunk_id=p.chunk_id, title=p.title, url=p.url,
                      text=p.text, heading_path=p.heading_path)
        for n, p in enumerate(found, start=1)
    ]


def answer_prepare(*, conversation: Conversation, user, session_key: str | None, question: str) -> PreparedAnswer:
    """Check limits, retrieve, build the prompt and save the question.

    Raises the :mod:`apps.chat.limits` errors (shown in the envelope) before
    anything is saved or any model is called.
    """
    question = limits.check_question(question)
    limits.check_conversation_size(selectors.questions_asked(conversation=conversation))
    limits.take_rate_slot(user=user, session_key=session_key or "")
    history = selectors.recent_history(conversation=conversation, limit=settings.CHAT_HISTORY_MESSAGES)
    # Retrieval runs as the asking user: visibility is decided inside the search SQL.
    passages = _passages(question=question, user=user)
    route = settings.CHAT_ROUTE
    prompt = build_prompt(question=question, passages=passages, history=history, route=route)
    with transaction.atomic():
        asked = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=question)
        answer = Message.objects.create(
            conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.PARTIAL, route=route,
            sources=[p.source() for p in prompt.passages],
        )
        updates = {"updated_at": timezone.now()}
        if not conversation.title:
            updates["title"] = question if len(question) <= TITLE_CHARS else question[: TITLE_CHARS - 1] + "…"
        Conversation.objects.filter(pk=conversation.pk).update(**updates)
    logger.info("chat.question", conversation_id=conversation.pk, message_id=answer.pk,
                passages=len(prompt.passages), dropped_passages=prompt.dropped_passages,
                dropped_turns=prompt.dropped_turns, prompt_tokens=prompt.prompt_tokens)
    return PreparedAnswer(conversation_id=conversation.pk, question_id=asked.pk, message_id=answer.pk,
                          question=question, prompt=prompt, route=route, user=user, scope=visibility_scope(user))


def answer_finish(*, message_id: int, content: str, status: str, citations: list[dict], error: str = "",
                  provider: str = "", model: str = "", prompt_tokens: int = 0, completion_tokens: int = 0,
                  cost: Decimal | None = None, ttft_ms: float | None = None, latency_ms: float | None = None,
                  cached: bool = False, usage_record_id: str = "") -> None:
    """Record the end of a streamed answer (complete, partial or error)."""
    Message.objects.filter(pk=message_id).update(
        content=content, status=status, citations=citations, error=error[:2000], provider=provider[:64],
        model=model[:200], prompt_tokens=max(0, int(prompt_tokens or 0)),
        completion_tokens=max(0, int(completion_tokens or 0)), cost=cost if cost is not None else Decimal("0"),
        ttft_ms=ttft_ms, latency_ms=latency_ms, cached=cached, usage_record_id=str(usage_record_id or "")[:64],
    )
