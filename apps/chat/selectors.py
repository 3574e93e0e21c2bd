"""Reads of conversations. A conversation is visible only to its owner: the
signed-in user who started it, or the anonymous session that started it.
Anything else is a 404, never a 403 (its existence is not revealed)."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from apps.chat.models import Conversation, Message


def _owner_q(*, user, session_key: str | None) -> Q | None:
    if user is not None and user.is_authenticated:
        return Q(owner=user)
    if session_key:
        return Q(owner__isnull=True, session_key=session_key)
    return None


def owned_conversations(*, user, session_key: str | None) -> QuerySet[Conversation]:
    """The caller's conversations (none for a caller with neither a user nor a session)."""
    owner = _owner_q(user=user, session_key=session_key)
    return Conversation.objects.none() if owner is None else Conversation.objects.filter(owner)


def conversation_list(*, user, session_key: str | None) -> QuerySet[Conversation]:
    return owned_conversations(user=user, session_key=session_key).annotate(message_count=Count("messages"))


def conversation_get(*, conversation_id: int, user, session_key: str | None,
                     count_questions: bool = False) -> Conversation:
    """The caller's conversation ``conversation_id``, or ``Http404``.

    ``count_questions``: also read the questions asked so far, as ``questions_asked``
    (same query; answering a question checks it against the limit).
    """
    owner = _owner_q(user=user, session_key=session_key)
    if owner is None:
        raise Http404("No such conversation.")
    conversations = Conversation.objects.all()
    if count_questions:
        conversations = conversations.annotate(
            questions_asked=Count("messages", filter=Q(messages__role=Message.Role.USER)))
    try:
        return conversations.get(owner, pk=conversation_id)
    except (Conversation.DoesNotExist, ValueError, TypeError, OverflowError):
        raise Http404("No such conversation.") from None


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created_at", "id")
