"""Reads of conversations. A conversation is visible only to its owner: the
signed-in user who started it, or the anonymous session that started it.
Anything else is a 404, never a 403 (its existence is not revealed)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.urls import reverse

from apps.chat.models import Conversation, Message
from apps.documents.selectors import visible_documents


def owner_kind(*, user, session_key: str | None) -> str | None:
    """Which rule decides what the caller owns: "user" (signed in), "session" (anonymous, by
    session key) or None (nobody to own anything). The rule's SQL differs only by this kind."""
    if user is not None and user.is_authenticated:
        return "user"
    return "session" if session_key else None


def _owner_q(*, user, session_key: str | None) -> Q | None:
    kind = owner_kind(user=user, session_key=session_key)
    if kind == "user":
        return Q(owner=user)
    if kind == "session":
        return Q(owner__isnull=True, session_key=session_key)
    return None


def owned_conversations(*, user, session_key: str | None) -> QuerySet[Conversation]:
    """The caller's conversations (none for a caller with neither a user nor a session)."""
    owner = _owner_q(user=user, session_key=session_key)
    return Conversation.objects.none() if owner is None else Conversation.objects.filter(owner)


# owned_conversations(...).filter(pk=...) compiled, by the kind of rule that decides what the
# caller owns (owner_kind): compiling it is a third of a millisecond of the event loop's time on
# every question asked.
_OWNED_SQL: dict[str, str] = {}


def owned_conversation_sql(conversation_id: int, *, user, session_key: str | None) -> tuple[str, list]:
    """The conversation ``conversation_id`` if it is the caller's, as SQL selecting its id and
    its params (``Http404`` for a caller with nobody to own it)."""
    kind = owner_kind(user=user, session_key=session_key)
    if kind is None:
        raise Http404("No such conversation.")
    # The values the rule compares with, in its order: the owner or the session, then the id.
    expected = [user.pk if kind == "user" else session_key, conversation_id]
    sql = _OWNED_SQL.get(kind)
    if sql is not None:
        return sql, expected
    owned = owned_conversations(user=user, session_key=session_key).filter(pk=conversation_id)
    sql, params = owned.order_by().values("pk").query.sql_with_params()
    if list(params) == expected:  # kept only if the values are exactly the parameters (they are today)
        _OWNED_SQL[kind] = sql
    return sql, list(params)


def conversation_list(*, user, session_key: str | None) -> QuerySet[Conversation]:
    return owned_conversations(user=user, session_key=session_key).annotate(message_count=Count("messages"))


def conversation_get(*, conversation_id: int, user, session_key: str | None) -> Conversation:
    """The caller's conversation ``conversation_id``, or ``Http404``."""
    owner = _owner_q(user=user, session_key=session_key)
    if owner is None:
        raise Http404("No such conversation.")
    try:
        return Conversation.objects.get(owner, pk=conversation_id)
    except (Conversation.DoesNotExist, ValueError, TypeError, OverflowError):
        raise Http404("No such conversation.") from None


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.order_by("created_at", "id")


def with_current_citations(messages: Iterable[Message], *, user) -> list[Message]:
    """``messages`` as ``user`` may see their citations now.

    An answer is saved with the citations it was given, but a cited document may since have
    been unpublished, made private or deleted, or the reader may have lost access to it
    (signed out, no longer staff): its title and link are then left out, so an old thread
    shows no more than a new answer would (visibility decided in SQL, one query for all the
    messages). A citation still shown takes the document's current title and URL.
    """
    messages = list(messages)
    cited = {c.get("document_id") for m in messages for c in (m.citations or []) if isinstance(c, dict)}
    cited.discard(None)
    if not cited:
        return messages
    current = {pk: (title, reverse("search:document", args=[slug]))
               for pk, title, slug in visible_documents(user=user).filter(pk__in=cited).values_list("pk", "title", "slug")}
    for message in messages:
        message.citations = [
            {**c, "title": current[c["document_id"]][0], "url": current[c["document_id"]][1]}
            for c in (message.citations or []) if isinstance(c, dict) and c.get("document_id") in current
        ]
    return messages
