"""Writes of the chat app and the half of answering a question before the model is called.

:func:`aanswer_prepare` (on the event loop, for both the chat page's stream and the API's)
checks the limits, saves the question plus an assistant message in state ``partial`` and
builds the prompt from passages retrieved under the asking user's visibility - the
conversation's read and writes on a pooled connection of their own while it retrieves;
:mod:`apps.chat.streaming` then streams the answer and :func:`aanswer_finish` records how it
ended (with the passages shown).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from rest_framework.exceptions import APIException

from apps.chat import limits, selectors
from apps.chat.models import Conversation, Message
from apps.chat.prompts import Prompt, PromptPassage, build_prompt, history_turn
from apps.core.adb import afetch_prepared, offline_connection
from apps.core.logging import get_logger
from apps.documents.selectors import visibility_scope
from apps.search.services import aembed_query_soon, aretrieve_passages

logger = get_logger("quire.chat")
TITLE_CHARS = 80


@dataclass(eq=False)
class PreparedAnswer:
    conversation_id: int
    question_id: int
    message_id: int
    question: str
    prompt: Prompt | None  # dropped by the stream once the model call holds what it needs
    route: str
    user: object  # the asking user (AnonymousUser for anonymous readers)
    scope: str  # the cache permission scope of ``user``
    sources: list[dict] = field(default_factory=list)  # what the reader may see of each passage (no text)
    prepare_ms: float | None = None  # request received -> ready to call the model (limits, retrieval, rows)
    retrieval_ms: float | None = None  # of which: the passages retrieved (with the wait for the query vector)


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


def _prompt_passages(found) -> list[PromptPassage]:
    return [
        PromptPassage(n=n, document_id=p.document_id, chunk_id=p.chunk_id, title=p.title, url=p.url,
                      text=p.text, heading_path=p.heading_path, text_tokens=p.text_tokens)
        for n, p in enumerate(found, start=1)
    ]


@dataclass
class _Bookkeeping:
    conversation_id: int
    history: list[dict]
    question_id: int
    message_id: int


# One statement (after the row lock, see _bookkeeping_statement), one round trip, one transaction: is the
# conversation the caller's (the ``owned`` subquery is selectors.owned_conversations, compiled),
# how many questions it holds,
# its recent turns (read before the new rows: same snapshot; failed and empty answers left out,
# a partial one kept: it is what the reader saw), and, if the limit allows, the question and its
# assistant message (``partial`` until aanswer_finish) plus the conversation's title and
# updated_at. The ORM would make six round trips of it (a read, the history, BEGIN, INSERT,
# UPDATE, COMMIT), on the path to the first token.
_RECORD_QUESTION = """
WITH conv AS (
    SELECT c.id, (SELECT count(*) FROM {message} m WHERE m.conversation_id = c.id AND m.role = %s) AS asked
    FROM {conversation} c WHERE c.id IN ({owned})
),
allowed AS (SELECT id FROM conv WHERE asked < %s),
added AS (
    INSERT INTO {message} (conversation_id, role, content, status, route, citations, sources, provider, model,
                           prompt_tokens, completion_tokens, cost, cached, usage_record_id, error, created_at)
    SELECT a.id, v.role, v.content, v.status, v.route, '[]'::jsonb, '[]'::jsonb, '', '', 0, 0, 0, false, '', '', %s
    FROM allowed a CROSS JOIN (VALUES (1, %s, %s, %s, ''), (2, %s, '', %s, %s)) AS v(n, role, content, status, route)
    ORDER BY v.n
    RETURNING id, role
),
touched AS (
    UPDATE {conversation} c SET updated_at = %s, title = CASE WHEN c.title = '' THEN %s ELSE c.title END
    FROM allowed a WHERE c.id = a.id
),
recent AS (
    SELECT m.role, m.content, m.created_at, m.id FROM {message} m JOIN conv ON m.conversation_id = conv.id
    WHERE m.status <> %s AND m.content <> '' ORDER BY m.created_at DESC, m.id DESC LIMIT %s
)
SELECT conv.asked, (SELECT json_object_agg(role, id) FROM added),
       (SELECT json_agg(json_build_array(r.role, r.content) ORDER BY r.created_at, r.id) FROM recent r)
FROM conv"""


async def _abookkeeping(*, conversation: int, user, session_key: str | None, question: str,
                        route: str) -> _Bookkeeping:
    """Check the conversation is the caller's (``Http404``) and not full (``ConversationFull``),
    read its recent turns and save the question with its ``partial`` answer: one round trip, on
    the event loop (apps.core.adb), on a pooled connection of its own."""
    conversation_id, sql, params, lock = _bookkeeping_statement(conversation=conversation, user=user,
                                                                session_key=session_key, question=question,
                                                                route=route)
    return _bookkeeping_from(conversation_id, await afetch_prepared(sql, params, setup=lock))


def _bookkeeping_statement(*, conversation: int, user, session_key: str | None, question: str,
                           route: str) -> tuple[int, str, list, tuple[str, list]]:
    conversation_id = conversation
    if not isinstance(conversation_id, int) or not 0 < conversation_id < 2**63:
        raise Http404("No such conversation.")
    owned_sql, owned_params = selectors.owned_conversation_sql(conversation_id, user=user, session_key=session_key)
    title = question if len(question) <= TITLE_CHARS else question[: TITLE_CHARS - 1] + "…"
    now = timezone.now()
    sql = _RECORD_QUESTION.format(message=Message._meta.db_table, conversation=Conversation._meta.db_table,
                                  owned=owned_sql)
    user_role, answer_role = Message.Role.USER.value, Message.Role.ASSISTANT.value
    params = [user_role, *owned_params, int(settings.CHAT_MAX_QUESTIONS_PER_CONVERSATION),
              now, user_role, question, Message.Status.COMPLETE.value,
              answer_role, Message.Status.PARTIAL.value, route, now, title,
              Message.Status.ERROR.value, max(0, int(settings.CHAT_HISTORY_MESSAGES))]
    # The conversation's row is locked by a statement of its own first, in the same transaction
    # and round trip (apps.core.db): a question asked at the same moment on the same conversation
    # waits for this one to commit, and its statement, whose snapshot is taken after that, then
    # counts this question. Locked inside the one statement instead, the count would come from a
    # snapshot taken before the wait, and two questions could both take the last free place.
    # Prepared: the same text every time (apps.core.db).
    lock = (f"SELECT 1 FROM {Conversation._meta.db_table} WHERE id IN ({owned_sql}) FOR UPDATE", list(owned_params))
    return conversation_id, sql, params, lock


def _bookkeeping_from(conversation_id: int, rows: list[tuple]) -> _Bookkeeping:
    if not rows:
        raise Http404("No such conversation.")
    asked, ids, recent = rows[0]  # ids: {"user": question id, "assistant": answer id}
    if not ids:
        limits.check_conversation_size(asked)  # raises: the limit is why nothing was added
        raise RuntimeError("the question was not saved")  # pragma: no cover - unreachable
    history = [history_turn(role, content) for role, content in (recent or [])]
    user_role, answer_role = Message.Role.USER.value, Message.Role.ASSISTANT.value
    return _Bookkeeping(conversation_id, history, ids[user_role], ids[answer_role])


def aembed_question_soon(question: str) -> asyncio.Task | None:
    """Start the question's query embedding now, as a task on the running loop, for
    :func:`aanswer_prepare`'s ``query_vector``; None if none was started (the question would be
    refused anyway, or see :func:`apps.search.services.aembed_query_soon`)."""
    question = _valid_question(question)
    return None if question is None else aembed_query_soon(question, mode=settings.CHAT_RETRIEVAL_MODE)


def _valid_question(question) -> str | None:
    try:
        return limits.check_question(question)
    except APIException:
        return None


async def aanswer_prepare(*, conversation: int, user, session_key: str | None, question: str,
                          query_vector: asyncio.Future | None = None, address: str | None = None) -> PreparedAnswer:
    """Check the limits, save the question, retrieve and build the prompt, on the event loop
    (the chat page's stream and the API's, once DRF has accepted the question).

    Raises the :mod:`apps.chat.limits` errors (shown in the envelope) before anything is saved
    or any model is called. ``conversation`` (an id) is looked up (``Http404`` if it is not the
    caller's) while the passages are already being retrieved, after the per-minute limit
    counted the question: the bookkeeping statement and the retrieval run at once on two
    pooled connections (:mod:`apps.core.adb`), the per-minute count through the loop's Redis
    client, the query embedding (``query_vector``: the :func:`aembed_question_soon` task, started
    by a caller that had other work to do first) on the loop too with an HTTP backend. If
    retrieval fails after the rows were saved, the answer is recorded as an error and the
    exception propagates. ``address``: the client's, for the per-address limit on anonymous
    questions.
    """
    question = limits.check_question(question)
    _check_caller(user=user, session_key=session_key)
    await limits.atake_rate_slot(user=user, session_key=session_key or "", address=address)
    route = settings.CHAT_ROUTE
    bookkeeping = asyncio.ensure_future(_abookkeeping(conversation=conversation, user=user, session_key=session_key,
                                                      question=question, route=route))
    try:
        retrieving = time.perf_counter()
        passages = _prompt_passages(await aretrieve_passages(
            query=question, user=user, limit=settings.CHAT_RETRIEVAL_LIMIT, mode=settings.CHAT_RETRIEVAL_MODE,
            query_vector=query_vector))
        retrieval_ms = _elapsed_ms(retrieving)
        saved = await bookkeeping
        prompt = build_prompt(question=question, passages=passages, history=saved.history, route=route)
    except Exception as exc:
        saved = await bookkeeping  # re-raises its own error (404, limits): nothing was saved then
        await aanswer_finish(message_id=saved.message_id, content="", status=Message.Status.ERROR, citations=[],
                             error=f"retrieval failed: {type(exc).__name__}")
        raise
    return _prepared(saved, question=question, prompt=prompt, route=route, user=user, retrieval_ms=retrieval_ms)


def _elapsed_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


def _check_caller(*, user, session_key: str | None) -> None:
    if not (session_key or getattr(user, "is_authenticated", False)):
        raise Http404("No such conversation.")  # nobody to own it: not worth a retrieval


def _prepared(saved: _Bookkeeping, *, question: str, prompt: Prompt, route: str, user,
              retrieval_ms: float) -> PreparedAnswer:
    conversation_id, message_id = saved.conversation_id, saved.message_id
    logger.info("chat.question", conversation_id=conversation_id, message_id=message_id,
                passages=len(prompt.passages), dropped_passages=prompt.dropped_passages,
                dropped_turns=prompt.dropped_turns, prompt_tokens=prompt.prompt_tokens, retrieval_ms=retrieval_ms)
    return PreparedAnswer(conversation_id=conversation_id, question_id=saved.question_id, message_id=message_id,
                          question=question, prompt=prompt, route=route, user=user, scope=visibility_scope(user),
                          sources=[p.source() for p in prompt.passages], retrieval_ms=retrieval_ms)


async def aanswer_finish(*, message_id: int, **fields) -> None:
    """Record the end of a streamed answer (complete, partial or error) and the passages it was
    shown (:func:`_finished`), as one prepared ``UPDATE`` on the event loop (apps.core.adb): no
    thread, no query compiled per answer."""
    values = _finished(message_id=message_id, **fields)
    names = sorted(values)
    opts = Message._meta
    offline = offline_connection()  # not django.db.connection: see offline_connection
    quote = offline.ops.quote_name
    columns = ", ".join(f"{quote(opts.get_field(name).column)} = %s" for name in names)
    # get_db_prep_save: what the ORM's update would send (JSON adapted, Decimal quantised).
    params = [opts.get_field(name).get_db_prep_save(values[name], offline) for name in names]
    await afetch_prepared(f"UPDATE {quote(opts.db_table)} SET {columns} WHERE {quote(opts.pk.column)} = %s "
                          "RETURNING 1", [*params, message_id])


def _finished(*, message_id: int, content: str, status: str, citations: list[dict], error: str = "",
              provider: str = "", model: str = "", prompt_tokens: int = 0, completion_tokens: int = 0,
              cost: Decimal | None = None, ttft_ms: float | None = None, latency_ms: float | None = None,
              cached: bool = False, usage_record_id: str = "", sources: list[dict] | None = None) -> dict:
    """The fields an answer's end writes, cut to their columns' sizes (``sources`` only if given)."""
    return {
        **({"sources": sources} if sources is not None else {}),
        "content": content, "status": status, "citations": citations, "error": error[:2000],
        "provider": provider[:64], "model": model[:200], "prompt_tokens": max(0, int(prompt_tokens or 0)),
        "completion_tokens": max(0, int(completion_tokens or 0)),
        "cost": cost if cost is not None else Decimal("0"), "ttft_ms": ttft_ms, "latency_ms": latency_ms,
        "cached": cached, "usage_record_id": str(usage_record_id or "")[:64],
    }
