"""The answer as a server-sent event stream, produced by an async generator.

Events (one JSON object per ``data:`` line)::

    event: meta       {"message_id", "conversation_id", "sources": [{n, document_id, chunk_id, title, url}]}
    event: token      {"text"}
    event: citations  {"citations": [{n, document_id, chunk_id, title, url}]}
    event: done       {"message_id", "status", "provider", "model", "extractive", "cached",
                       "usage": {"prompt_tokens", "completion_tokens"}, "cost", "ttft_ms", "latency_ms"}
    event: error      {"code", "message", "message_id"}

plus a ``: heartbeat`` comment whenever nothing was sent for
``CHAT_HEARTBEAT_SECONDS`` (proxies keep the connection open), and an end after
``CHAT_MAX_STREAM_SECONDS`` (error ``max_duration``, message ``partial``).

The LLM stream is read by a small pump task into an inbox, so that the reader
can wake for a heartbeat or the deadline without cancelling the upstream read.
One timer per stream does both: it fires when the stream has been silent for the
heartbeat interval (or at the deadline) and is then set again from the last
write, so a token costs no timer of its own.

When the client goes away, uvicorn tells Django, Django cancels the response
task, and this generator receives ``CancelledError`` (or ``GeneratorExit`` from
``aclose()``): it cancels the pump, which cancels the upstream request at once,
and saves what was said so far as ``partial``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal

from django.conf import settings
from prometheus_client import Counter, Histogram

from apps.chat.citations import resolve_citations
from apps.chat.models import Message
from apps.chat.services import PreparedAnswer, aanswer_finish
from apps.core.logging import get_logger
from apps.core.text import TextBuffer
from apps.llm.conf import get_provider
from apps.llm.exceptions import LLMError
from apps.llm.services import ChatRequest, stream_chat

logger = get_logger("quire.chat.stream")

STREAMS = Counter("quire_chat_streams_total", "Chat answers streamed, by how they ended", ["status"])
TTFT = Histogram("quire_chat_ttft_seconds", "Question received to first answer token sent",
                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
EVENTS = Counter("quire_chat_sse_events_total", "Server-sent events written", ["event"])

HEARTBEAT = b": heartbeat\n\n"
_END = object()
_TICK = object()  # the stream's timer: time for a heartbeat, or the deadline
_EARLY = 0.002  # event-loop timers have millisecond resolution and may fire a little early


def is_extractive(provider: str) -> bool:
    """Whether ``provider`` (an LLM_PROVIDERS alias) answers without a model."""
    try:
        return not get_provider(provider).model_backed
    except Exception:
        return False


def sse(event: str, data: dict) -> bytes:
    """One server-sent event; JSON never contains a raw newline, so one data line suffices."""
    EVENTS.labels(event).inc()
    return b"event: " + event.encode() + b"\ndata: " + json.dumps(data, default=str).encode() + b"\n\n"


class _Inbox:
    """Events the pump received and the reader has not taken yet.

    One writer, one reader: a list and at most one waiting future, instead of an
    ``asyncio.Queue`` (three deques, about 2 KB) held by every open stream.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self):
        self._items: list = []
        self._waiter: asyncio.Future | None = None

    def put(self, item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self):
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


async def _pump(events: AsyncIterator, inbox: _Inbox) -> None:
    try:
        async for event in events:
            inbox.put(event)
    except LLMError as exc:  # raised before any call (budget) or by a provider
        inbox.put(exc)
    except Exception as exc:  # never leave the reader waiting forever
        logger.exception("chat.stream_failed")
        inbox.put(exc)
    inbox.put(_END)


async def answer_events(prepared: PreparedAnswer, *, started: float | None = None) -> AsyncIterator[bytes]:
    """The SSE byte stream answering ``prepared``; saves the message however it ends."""
    started = started if started is not None else time.perf_counter()
    prepared.prepare_ms = round((time.perf_counter() - started) * 1000, 2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.CHAT_MAX_STREAM_SECONDS
    heartbeat = settings.CHAT_HEARTBEAT_SECONDS
    # Kept as JSON text while the answer streams (a fraction of the dicts' size), decoded for the citations.
    sources_json = json.dumps(prepared.sources, default=str)
    message_id = prepared.message_id
    # The answer so far, compact (apps.core.text), written by the proxy as tokens arrive from the
    # model: one copy per stream. A stream cut short saves what the model had said, which may run
    # a token or two past what the reader received.
    pieces = TextBuffer()
    outcome = {"status": Message.Status.PARTIAL, "error": "", "citations": []}
    done_event = None
    failed_event = None  # an ErrorEvent: what a failed or cut answer cost, per the ledger
    first_token_at = None

    # The prompt (its system message quotes every passage) and the passages with their text
    # for the extractive backend are read before the first token: by the proxy's cache key,
    # by the provider's request, by the extractive backend (it composes its whole answer
    # before its first piece); the ledger counts prompt tokens from ``prompt_tokens`` when a
    # provider reports none. After the first token nothing reads them, so both lists are
    # emptied then: about 15 KB less per open stream with passages of real documents.
    messages = prepared.prompt.messages
    backend_passages = [p.for_backend() for p in prepared.prompt.passages]
    request = ChatRequest(
        route=prepared.route, messages=messages,
        # An anonymous reader is passed as such (AnonymousUser): the proxy charges its call to the
        # budget all readers who are not signed in share (LLM_ANONYMOUS_MONTHLY_BUDGET_USD).
        user=prepared.user,
        scope=prepared.scope, passages=backend_passages, prompt_tokens=prepared.prompt.prompt_tokens,
        answer=pieces,
    )
    prepared.prompt = None  # what the call needs is in ``request``; the rest need not live as long as the stream
    inbox = _Inbox()
    events = stream_chat(request)
    del request
    pump = asyncio.ensure_future(_pump(events, inbox))
    timer = None
    try:
        yield sse("meta", {"message_id": message_id, "conversation_id": prepared.conversation_id,
                           "sources": prepared.sources})
        prepared.sources = []
        last_write = loop.time()
        timer = loop.call_at(min(last_write + heartbeat, deadline), inbox.put, _TICK)
        while True:
            if loop.time() >= deadline - _EARLY:
                outcome["error"] = "The answer took too long and was cut off."
                yield sse("error", {"code": "max_duration", "message": outcome["error"], "message_id": message_id})
                break
            event = await inbox.get()
            if event is _TICK:
                if loop.time() - last_write >= heartbeat - _EARLY:
                    yield HEARTBEAT
                    last_write = loop.time()
                if loop.time() < deadline - _EARLY:
                    timer = loop.call_at(min(last_write + heartbeat, deadline), inbox.put, _TICK)
                continue
            last_write = loop.time()
            if event is _END:
                if done_event is None and outcome["status"] == Message.Status.PARTIAL and not outcome["error"]:
                    outcome["error"] = "The answer ended without a final event."
                break
            if isinstance(event, Exception):
                code = getattr(event, "code", "chat_error")
                message = getattr(event, "message", None) or "The answer failed."
                outcome["error"] = f"{code}: {message}"
                yield sse("error", {"code": code, "message": message, "message_id": message_id})
                break
            kind = event.type
            if kind == "token":
                yield sse("token", {"text": event.text})
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    TTFT.observe(first_token_at - started)
                    messages.clear()
                    backend_passages.clear()
            elif kind == "done":
                done_event = event
                outcome["status"] = Message.Status.COMPLETE
                outcome["citations"] = resolve_citations(pieces.text(), json.loads(sources_json))
                yield sse("citations", {"citations": outcome["citations"]})
                yield sse("done", _done_payload(prepared, event, first_token_at, started))
            elif kind == "error":
                failed_event = event
                code = getattr(event, "code", "llm_error")
                message = getattr(event, "message", "") or "The answer failed."
                outcome["error"] = f"{code}: {message}"
                yield sse("error", {"code": code, "message": message, "message_id": message_id})
                break
    finally:
        # Reached on completion, on an error, on the deadline, and when the client
        # disconnected (CancelledError / GeneratorExit): stop the upstream first.
        if timer is not None:
            timer.cancel()
        if not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(pump), timeout=1.0)
        with contextlib.suppress(Exception):
            await events.aclose()
        text = pieces.text()
        status = outcome["status"]
        sources = json.loads(sources_json)
        if status != Message.Status.COMPLETE:
            status = Message.Status.PARTIAL if text else Message.Status.ERROR
            if not outcome["error"]:
                outcome["error"] = "The reader disconnected before the answer was complete."
            outcome["citations"] = resolve_citations(text, sources)
        STREAMS.labels(status).inc()
        await _save(prepared, done_event or failed_event, text=text, status=status, error=outcome["error"],
                    citations=outcome["citations"], sources=sources, first_token_at=first_token_at,
                    started=started)


def _usage(event) -> tuple[int, int]:
    usage = getattr(event, "usage", None)
    if usage is None:
        return 0, 0
    if isinstance(usage, dict):
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


def _done_payload(prepared: PreparedAnswer, event, first_token_at: float | None, started: float) -> dict:
    prompt_tokens, completion_tokens = _usage(event)
    provider = getattr(event, "provider", "") or ""
    return {
        "message_id": prepared.message_id,
        "status": Message.Status.COMPLETE,
        "provider": provider,
        "model": getattr(event, "model", "") or "",
        "extractive": is_extractive(provider) if provider else False,
        "cached": bool(getattr(event, "cached", False)),
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost": str(getattr(event, "cost", None) or Decimal("0")),
        "ttft_ms": round((first_token_at - started) * 1000, 2) if first_token_at else None,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "upstream_ttft_ms": getattr(event, "ttft_ms", None),
        "prepare_ms": prepared.prepare_ms,
        "retrieval_ms": prepared.retrieval_ms,
    }


async def _save(prepared: PreparedAnswer, final_event, *, text: str, status: str, error: str,
                citations: list[dict], sources: list[dict], first_token_at: float | None, started: float) -> None:
    """``final_event``: the DoneEvent, or the ErrorEvent of a failed / interrupted call (its usage and
    cost are what the ledger charged), or None (the reader left first)."""
    prompt_tokens, completion_tokens = _usage(final_event) if final_event is not None else (0, 0)
    fields = {
        "message_id": prepared.message_id, "content": text, "status": status, "citations": citations,
        "sources": sources,
        "error": error if status != Message.Status.COMPLETE else "",
        "provider": getattr(final_event, "provider", "") or "", "model": getattr(final_event, "model", "") or "",
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "cost": getattr(final_event, "cost", None), "cached": bool(getattr(final_event, "cached", False)),
        "usage_record_id": getattr(final_event, "usage_record_id", None),
        "ttft_ms": round((first_token_at - started) * 1000, 2) if first_token_at else None,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    try:
        # Shielded: the client may be gone, the answer must still be recorded.
        await asyncio.shield(aanswer_finish(**fields))
    except Exception:
        logger.exception("chat.save_failed", message_id=prepared.message_id)
    logger.info("chat.answer", message_id=prepared.message_id, status=status, provider=fields["provider"],
                completion_tokens=completion_tokens, ttft_ms=fields["ttft_ms"], latency_ms=fields["latency_ms"])
