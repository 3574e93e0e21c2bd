"""Chat limits: question length, questions per conversation and per minute.

The per-minute limit is a fixed one-minute window counted in Redis (one INCR per
question), shared by every web process; a signed-in user is counted by user
id, an anonymous reader by session key and, since a new session costs nothing, all
anonymous sessions from one address together as well (both counters in one round trip).
While Redis is unavailable questions are not counted, and admitted (as the API's own rate
limits and the LLM budgets do: :mod:`apps.core.degraded`); the per-conversation limit, kept in
PostgreSQL, still holds.
"""

from __future__ import annotations

import ipaddress
import time

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import status

from apps.core import parsers
from apps.core.degraded import redis_unavailable
from apps.core.exceptions import QuireAPIError
from apps.llm.runtime import aredis


class ChatLimitExceeded(QuireAPIError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "chat_rate_limited"
    default_detail = "Too many questions; wait a moment."


class QuestionInvalid(QuireAPIError):
    default_code = "invalid_question"
    default_detail = "The question is not valid."


class ConversationFull(QuireAPIError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conversation_full"
    default_detail = "This conversation has reached its message limit; start a new one."


def check_question(question) -> str:
    """The question stripped, or :class:`QuestionInvalid`. ``question`` is what the request
    carried: a JSON body's may be a number, a list... (the API's serializer refuses those the same way)."""
    if question is not None and not isinstance(question, str):
        raise QuestionInvalid("The question must be a string.", code="invalid_question")
    question = (question or "").strip()
    limit = settings.CHAT_MAX_QUESTION_CHARS
    if not question:
        raise QuestionInvalid("Ask a question first.", code="empty_question")
    # PostgreSQL text cannot hold a NUL, nor psycopg encode a lone surrogate (JSON's "\ud800")
    if "\x00" in question:
        raise QuestionInvalid("Null characters are not allowed.", code="invalid_question")
    if (surrogate := parsers.lone_surrogate(question)) is not None:
        raise QuestionInvalid(f"Surrogate characters are not allowed: U+{ord(surrogate):04X}.",
                              code="invalid_question")
    if len(question) > limit:
        raise QuestionInvalid(f"The question is {len(question)} characters long; the limit is {limit}.",
                              code="question_too_long", details={"max_chars": limit, "length": len(question)})
    return question


def check_conversation_size(asked: int) -> None:
    """``asked``: questions already in the conversation."""
    limit = settings.CHAT_MAX_QUESTIONS_PER_CONVERSATION
    if asked >= limit:
        raise ConversationFull(
            f"This conversation already has {limit} questions, the most one conversation may hold. "
            "Start a new conversation.", details={"max_questions": limit})


def _rate_windows(*, user, session_key: str, address: str | None) -> tuple[list[tuple[str, int, str]], float]:
    """The caller's Redis counters for this minute with their allowances and what they count
    (``(key, limit, scope)``), and now; no counter: unlimited."""
    signed_in = bool(user is not None and user.is_authenticated)
    now = time.time()
    prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', 'quire')}:chat:rate"
    minute = int(now // 60)
    if signed_in:
        limits = [(f"user:{user.pk}", settings.CHAT_QUESTIONS_PER_MINUTE, "user")]
    else:
        limits = [(f"session:{session_key}", settings.CHAT_ANON_QUESTIONS_PER_MINUTE, "session")]
        if address:
            limits.append((f"address:{_network(address)}", settings.CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS,
                           "address"))
    return [(f"{prefix}:{who}:{minute}", limit, scope) for who, limit, scope in limits if limit], now


def _network(address: str) -> str:
    """What one client is: an IPv4 address, or an IPv6 address's /64 (one home or host is
    routinely given a whole /64, and could otherwise ask from a new address every time)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket's peer): counted as it is
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def _check_count(count: int, limit: int, now: float, scope: str) -> None:
    if count > limit:
        retry_after = max(1, int(60 - now % 60) + 1)
        who = "Readers at your network address" if scope == "address" else "You"
        raise ChatLimitExceeded(
            f"{who} asked {limit} questions in the last minute, the most allowed. Try again in {retry_after} s.",
            details={"retry_after": retry_after, "limit_per_minute": limit, "scope": scope})


async def atake_rate_slot(*, user, session_key: str, address: str | None = None) -> None:
    """Count one question against the caller's per-minute allowances (anonymous: its session's
    and its ``address``'s), or raise 429 (through the loop's Redis client, one round trip)."""
    windows, now = _rate_windows(user=user, session_key=session_key, address=address)
    if not windows:
        return
    try:
        async with aredis().pipeline(transaction=True) as pipe:
            for key, _, _ in windows:
                pipe.incr(key)
                pipe.expire(key, 70)
            counts = (await pipe.execute())[::2]
    except (RedisError, OSError) as exc:
        redis_unavailable("chat.rate_limit", exc)
        return
    for (_, limit, scope), count in zip(windows, counts, strict=True):
        _check_count(count, limit, now, scope)
