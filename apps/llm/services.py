"""The public face of the inference proxy. Chat, enrichment and the
OpenAI-compatible endpoint all call these; nothing else in ``apps.llm`` is
meant to be imported by other apps.

Public API::

    @dataclass
    class ChatRequest:
        route: str                        # "chat", "enrich", ... (settings.LLM_ROUTES)
        messages: list[dict]              # OpenAI-style [{"role": ..., "content": ...}]
        user: User | None = None          # charged in the ledger, budget checked; an AnonymousUser (a
                                          # reader not signed in) shares LLM_ANONYMOUS_MONTHLY_BUDGET_USD
        api_key: ApiKey | None = None     # charged in the ledger, budget checked
        scope: str = "public"             # permission scope: part of the cache key
        cache: bool = True                # False: neither read nor write the cache
        passages: list[dict] | None = None  # {n, title, text, url|document_id} for the extractive backend
        params: dict | None = None        # model params over the route's (max_tokens is capped by the route)
        cache_read: CacheRead | None = None  # the response-cache read, if already made in another Redis call
        prompt_tokens: int | None = None  # the caller's count of ``messages`` (an upper bound will do):
                                          # used instead of recounting them, so a caller may let go of
                                          # their text once the first token arrived
        answer: TextBuffer | None = None  # an empty buffer of the caller's: the answer is kept in it as it
                                          # streams (a caller that needs the text need not keep a copy)

    async def stream_chat(request) -> AsyncIterator[LLMEvent]   # TokenEvent* then DoneEvent | ErrorEvent
    async def acomplete(request) -> ChatResult                  # raises LLMError on failure
    def complete(request) -> ChatResult                         # sync (Celery), same
    def count_tokens(route, text) -> int
    def count_tokens_batch(route, texts) -> list[int]
    def tokens_with_margin(route, raw) -> int  # a raw tokenizer count (Chunk.llm_tokens) with the margin
    def count_message_tokens(route, messages) -> int
    def route_config(route) -> RouteConfig   # .context_window, .max_tokens, .max_prompt_tokens
    def response_cache_key(request) -> str | None   # the Redis key of its cached answer, None if not cacheable
    def api_key_create(*, name, user, monthly_budget_usd=None, requests_per_minute=None,
                       tokens_per_minute=None) -> tuple[ApiKey, str]
    def api_key_revoke(*, api_key) -> ApiKey                # refused by every process from the next request
    async def aapi_key_admit(raw_key, *, count=True) -> KeyAdmission   # + requests-per-minute limit
    async def aembed(*, alias, texts, user=None, api_key=None, kind="document") -> EmbeddingsResult
    def api_embedding_models() -> dict[str, str]    # the names POST /v1/embeddings accepts -> alias
    def api_embedding_model_ids() -> list[str]      # what GET /v1/models lists for them

``BudgetExceeded`` is raised before any provider is called (by ``stream_chat``
on the first iteration, by ``acomplete``/``complete`` directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from apps.core import spans
from apps.core.degraded import redis_unavailable
from apps.core.logging import get_logger
from apps.core.text import TextBuffer
from apps.llm import budgets, cache, keys, ledger, runtime, tokens
from apps.llm.breaker import CircuitBreaker, Permit
from apps.llm.conf import RouteConfig, get_provider
from apps.llm.conf import route_config as _route_config
from apps.llm.exceptions import LLMError, LLMUnavailable
from apps.llm.metrics import COST, LATENCY, REQUESTS, TOKENS, TTFT
from apps.llm.router import Attempt, MidStreamFailure, walk

logger = get_logger("quire.llm")


def _log_calls() -> bool:
    # structlog runs its processors before the stdlib level check; skip that work when INFO is off.
    return logging.getLogger("quire.llm").isEnabledFor(logging.INFO)

_background_tasks: set[asyncio.Task] = set()


@dataclass
class ChatRequest:
    """One call through the proxy. See the module docstring for each field."""

    route: str
    messages: list[dict]
    user: object = None
    api_key: object = None
    scope: str = "public"
    cache: bool = True
    passages: list[dict] | None = None
    params: dict | None = None
    cache_read: CacheRead | None = None
    prompt_tokens: int | None = None
    answer: TextBuffer | None = None


def _prompt_tokens(request: ChatRequest) -> int:
    if request.prompt_tokens is not None:
        return request.prompt_tokens
    return tokens.count_message_tokens(request.messages)


@dataclass
class CacheRead:
    """A read of the response cache made in another Redis call (the endpoint folds it
    into the API key check), so ``stream_chat`` need not make its own round trip.
    ``key`` must be ``response_cache_key(request)`` of the request it is passed with."""

    key: str
    raw: bytes | None


@dataclass
class UsageInfo:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool  # True when counted by us because the provider did not report usage

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ChatResult:
    """What ``complete``/``acomplete`` return (the DoneEvent's figures)."""

    text: str
    usage: UsageInfo
    cost: Decimal
    provider: str
    model: str
    ttft_ms: float | None
    latency_ms: float
    cached: bool
    usage_record_id: str
    fallbacks: int = 0


@dataclass
class TokenEvent:
    text: str
    type: str = "token"


@dataclass
class DoneEvent(ChatResult):
    """The answer is complete: the :class:`ChatResult` figures, ``text`` being the whole answer."""

    type: str = "done"


@dataclass
class ErrorEvent:
    """The answer failed (``partial`` is True if tokens had already been sent)."""

    code: str
    message: str
    partial: bool
    usage_record_id: str
    provider: str = ""
    cost: Decimal = Decimal("0")  # a partial answer is paid for
    usage: UsageInfo | None = None
    error: LLMError | None = field(default=None, repr=False)
    type: str = "error"


LLMEvent = TokenEvent | DoneEvent | ErrorEvent


# --- route information for prompt building ---------------------------------------------------
def route_config(route: str) -> RouteConfig:
    """Route settings: ``context_window``, ``max_tokens`` (output), ``max_prompt_tokens``."""
    return _route_config(route)


def count_tokens(route: str, text: str) -> int:
    """Tokens of ``text`` for ``route``'s models, with a safety margin (see ``apps.llm.tokens``)."""
    _route_config(route)  # unknown routes fail loudly
    return tokens.count_text_tokens(text)


def count_tokens_batch(route: str, texts: list[str]) -> list[int]:
    """``count_tokens`` of each text, in one tokenizer call."""
    _route_config(route)
    return tokens.count_text_tokens_batch(texts)


def tokens_with_margin(route: str, raw: int) -> int:
    """A raw tokenizer count (e.g. ``Chunk.llm_tokens``) as ``count_tokens`` would report it."""
    _route_config(route)
    return tokens.with_margin(raw)


def count_message_tokens(route: str, messages: list[dict]) -> int:
    """Prompt tokens of a message list, per-message overhead included."""
    _route_config(route)
    return tokens.count_message_tokens(messages)


# --- the call ----------------------------------------------------------------------------
def _effective_params(route: RouteConfig, requested: dict | None) -> dict:
    params = {**route.params, **(requested or {})}
    params["max_tokens"] = min(int(params.get("max_tokens") or route.max_tokens), route.max_tokens)
    return params


def _cache_key(request: ChatRequest, route: RouteConfig, params: dict) -> str | None:
    first = route.chain[0]
    provider = get_provider(first.provider)
    if not request.cache or not provider.model_backed:
        return None  # extractive answers are never cached
    return cache.cache_key(route=route.name, model=first.model or provider.default_model, messages=request.messages,
                           params=params, scope=request.scope, passages=request.passages)


def response_cache_key(request: ChatRequest) -> str | None:
    """The Redis key under which ``request``'s answer is cached, or None if it is not cacheable."""
    route = _route_config(request.route)
    return _cache_key(request, route, _effective_params(route, request.params))


async def _cached_answer(request: ChatRequest, key: str, route: RouteConfig) -> tuple[dict | None, Permit | None]:
    """The cached answer (or None), and the first provider's breaker permit if it could be
    read on the way: the cache GET and a read of that breaker's state go out in one round
    trip, and a closed breaker (nearly always) then costs no script of its own."""
    read = request.cache_read
    if read is not None:
        return cache.decode(read.raw, key=key, route=route.name), None
    first = route.chain[0].provider
    if not get_provider(first).model_backed:  # pragma: no cover - such a route has no cache key
        return await cache.get(key, route=route.name), None
    breaker = CircuitBreaker(first)
    try:
        async with runtime.aredis().pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hmget(breaker.state_key, "state", "failures")
            raw, fields = await pipe.execute()
    except RedisError as exc:
        redis_unavailable("llm.cache", exc)
        return cache.decode(None, key=key, route=route.name), None
    return cache.decode(raw, key=key, route=route.name), breaker.closed_permit(fields)


def _estimate_cost(route: RouteConfig, request: ChatRequest, params: dict) -> Decimal:
    return ledger.call_cost(route.chain[0].model_name, _prompt_tokens(request), params["max_tokens"])


async def stream_chat(request: ChatRequest, *, _stream: bool = True) -> AsyncIterator[LLMEvent]:
    """Stream an answer: ``TokenEvent``s, then one ``DoneEvent`` or ``ErrorEvent``.

    Budgets are checked before anything else (``BudgetExceeded``), then the
    cache (unless ``request.cache`` is False), then the route's providers in
    order. Stopping iteration (``aclose()``) or cancelling the consuming task
    cancels the upstream HTTP request at once and records the call as
    ``cancelled``. Every call leaves one ``UsageRecord`` whose id is on the
    final event.
    """
    started, started_ns, trace_parent = time.perf_counter(), time.time_ns(), spans.parent()
    route = _route_config(request.route)
    params = _effective_params(route, request.params)
    call_id = str(uuid.uuid4())
    reservation = None
    if budgets.may_apply(user=request.user, api_key=request.api_key):
        holders = await budgets.holders_for(user=request.user, api_key=request.api_key)
        if holders:  # only then is the prompt tokenised for the worst-case estimate
            reservation = await budgets.reserve(
                holders=holders, call_id=call_id, estimate=_estimate_cost(route, request, params),
                ttl_s=route.timeouts.total + 60,
            )
    state = _CallState(request=request, route=route, call_id=call_id, started=started, streamed=_stream,
                       reservation=reservation, parts=request.answer if request.answer is not None else TextBuffer(),
                       started_ns=started_ns, trace_parent=trace_parent)
    try:
        # A read already made (see CacheRead) was of this very request's key: don't hash it again.
        key = request.cache_read.key if request.cache_read is not None else _cache_key(request, route, params)
        permit = None
        if key is not None:
            hit, permit = await _cached_answer(request, key, route)
            if hit is not None:
                state.cached(hit)
                yield TokenEvent(hit["text"])
                yield await state.finish()
                return
        async with contextlib.aclosing(walk(route, messages=request.messages, params=params,
                                            passages=request.passages, stream=_stream,
                                            attempt=state.attempt, first_permit=permit)) as pieces:
            async for text in pieces:
                state.parts.append(text)
                yield TokenEvent(text)
        done = await state.finish()
        if key is not None and state.attempt.model_backed:
            await cache.put(key, {"text": done.text, "provider": done.provider, "model": done.model,
                                  "usage": [done.usage.prompt_tokens, done.usage.completion_tokens,
                                            done.usage.estimated]}, ttl=route.cache_ttl)
        yield done
    except MidStreamFailure as failure:
        yield await state.fail(failure.error, partial=True)
    except LLMError as error:
        yield await state.fail(error, partial=False)
    except (GeneratorExit, asyncio.CancelledError):
        state.cancel()
        raise


async def acomplete(request: ChatRequest) -> ChatResult:
    """The whole answer at once (the upstream is called without streaming).
    Raises ``BudgetExceeded`` before any call and the provider's ``LLMError`` if
    no provider answered."""
    async with contextlib.aclosing(stream_chat(request, _stream=False)) as events:
        async for event in events:
            if event.type == "done":
                return ChatResult(**{f.name: getattr(event, f.name) for f in fields(ChatResult)})
            if event.type == "error":
                raise event.error or LLMUnavailable(event.message)
    raise LLMUnavailable("the call ended without an answer")


async def drain_pending_records() -> None:
    """Wait until every finished call of this loop has its ledger row queued in Redis."""
    loop = asyncio.get_running_loop()
    pending = [task for task in _background_tasks if task.get_loop() is loop]
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def _complete_and_close(request: ChatRequest) -> ChatResult:
    try:
        return await acomplete(request)
    finally:
        await drain_pending_records()
        await runtime.aclose_loop_resources()


def complete(request: ChatRequest) -> ChatResult:
    """Synchronous ``acomplete`` for Celery tasks and management commands (not
    for code already inside an event loop: use ``acomplete`` there).

    Runs through ``async_to_sync``, so its database reads (budgets) use the
    caller's connection and transaction. It opens a short-lived connection
    pool for the call (a Celery task's LLM call takes seconds; the pooled,
    per-loop client matters on the web path) and writes its ledger row to the
    database before returning.
    """
    try:
        return async_to_sync(_complete_and_close)(request)
    finally:
        try:
            ledger.flush()
        except RedisError as exc:  # the row went straight to the database, or waits in Redis
            redis_unavailable("llm.ledger", exc)


# --- bookkeeping of one call ---------------------------------------------------------------
def _ledger_entry(*, call_id: str, route: str, user, api_key, provider: str, model: str, prompt_tokens: int,
                  completion_tokens: int, estimated: bool, cost: Decimal, latency_ms: float, ttft_ms: float | None,
                  cache_hit: bool, streamed: bool, outcome: str, error: str, fallbacks: int) -> dict:
    """One call's ``UsageRecord`` row, as :func:`apps.llm.ledger.push_command` queues it (the shape
    the ledger's INSERT reads): chat calls and embedding calls alike."""
    return {
        "id": call_id, "created_at": timezone.now().isoformat(), "route": route,
        "user_id": getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None,
        "api_key_id": getattr(api_key, "pk", None),
        "provider": provider, "model": model, "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens, "tokens_estimated": estimated,
        "cost_usd": str(cost), "latency_ms": round(latency_ms, 3),
        "ttft_ms": round(ttft_ms, 3) if ttft_ms is not None else None, "cache_hit": cache_hit,
        "streamed": streamed, "outcome": outcome, "error": error[:2000], "fallbacks": fallbacks,
        "anonymous": budgets.is_anonymous(user, api_key),
    }


def _observe_call(route: str, provider: str, model: str, outcome: str, latency_ms: float, *,
                  ttft_ms: float | None = None, tokens: dict[str, int] | None = None, cost: Decimal) -> None:
    """The proxy's metrics for one call; ``tokens`` by kind (prompt, completion) when it used any."""
    REQUESTS.labels(route, provider, outcome).inc()
    LATENCY.labels(route, provider).observe(latency_ms / 1000)
    if ttft_ms is not None:
        TTFT.labels(route, provider).observe(ttft_ms / 1000)
    for kind, count in (tokens or {}).items():
        TOKENS.labels(route, provider, kind).inc(count)
    if cost:
        COST.labels(route, provider, model).inc(float(cost))


def _record_soon(entry: dict, cost: Decimal, reservation: budgets.Reservation | None, api_key=None) -> None:
    """Queue the ledger row, settle the budget and spend the API key's tokens per minute in a
    task of its own: the caller gets its answer (and the HTTP client its bytes) without waiting
    for Redis. :func:`drain_pending_records` waits for these tasks."""
    task = asyncio.get_running_loop().create_task(_record(entry, cost, reservation, api_key))
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


async def _record(entry: dict, cost: Decimal, reservation: budgets.Reservation | None, api_key=None) -> None:
    tokens = 0 if entry["cache_hit"] else entry["prompt_tokens"] + entry["completion_tokens"]
    try:
        async with runtime.aredis().pipeline(transaction=False) as pipe:
            ledger.push_command(pipe, entry)
            if reservation is not None:
                reservation.settle_command(pipe, cost)
            keys.spend_tokens_command(pipe, api_key, tokens)
            await pipe.execute()
    except RedisError as exc:
        # No queue: write this row straight to the database (slower, still not lost).
        redis_unavailable("llm.ledger", exc)
        try:
            await sync_to_async(ledger.write_now)([entry])
        except Exception:
            logger.exception("llm.ledger.row_lost", row=entry)  # the log line is the last copy
        return
    await ledger.ensure_flusher()


@dataclass
class _CallState:
    request: ChatRequest
    route: RouteConfig
    call_id: str
    started: float
    streamed: bool
    reservation: budgets.Reservation | None
    attempt: Attempt = field(default_factory=Attempt)
    parts: TextBuffer = field(default_factory=TextBuffer)
    hit: dict | None = None
    recorded: bool = False
    started_ns: int = 0  # wall clock, for the call's span
    trace_parent: object | None = None  # apps.core.spans.parent() when the call started; None: no span

    def cached(self, hit: dict) -> None:
        self.hit = hit
        self.attempt.provider, self.attempt.model = hit["provider"], hit["model"]
        self.attempt.first_token_at = time.perf_counter()
        self.parts.append(hit["text"])  # before any token: the buffer is still empty

    def _usage(self) -> UsageInfo:
        if self.hit is not None:
            prompt, completion, estimated = self.hit["usage"]
            return UsageInfo(prompt, completion, estimated)
        reported = self.attempt.usage
        if reported is not None and (reported.prompt_tokens or reported.completion_tokens):
            return UsageInfo(reported.prompt_tokens, reported.completion_tokens, False)
        return UsageInfo(_prompt_tokens(self.request),
                         tokens.count_text_tokens(self.parts.text()), True)

    def _entry(self, outcome: str, error: str = "") -> tuple[dict, UsageInfo, Decimal, float, float | None]:
        latency_ms = (time.perf_counter() - self.started) * 1000
        ttft_ms = (self.attempt.first_token_at - self.started) * 1000 if self.attempt.first_token_at else None
        usage = self._usage()
        provider = self.attempt.provider or (self.route.chain[-1].provider if outcome == "error" else "")
        model = self.attempt.model or ""
        # A cache hit costs nothing; the tokens are kept to show what was saved.
        cost = Decimal("0") if self.hit is not None else ledger.call_cost(
            model, usage.prompt_tokens, usage.completion_tokens)
        failures = list(self.attempt.failures)
        if error:
            failures.append(error)
        entry = _ledger_entry(
            call_id=self.call_id, route=self.route.name, user=self.request.user, api_key=self.request.api_key,
            provider=provider, model=model, prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens, estimated=usage.estimated, cost=cost, latency_ms=latency_ms,
            ttft_ms=ttft_ms, cache_hit=self.hit is not None, streamed=self.streamed, outcome=outcome,
            error="\n".join(failures), fallbacks=self.attempt.fallbacks if self.hit is None else 0)
        _observe_call(self.route.name, provider, model, outcome, latency_ms, ttft_ms=ttft_ms, cost=cost,
                      tokens=None if self.hit is not None else {"prompt": usage.prompt_tokens,
                                                                 "completion": usage.completion_tokens})
        if self.trace_parent is not None:
            self._span(entry, usage, cost, outcome)
        if _log_calls():
            logger.info("llm.call", route=self.route.name, provider=provider, model=model, outcome=outcome,
                        cached=self.hit is not None, latency_ms=round(latency_ms, 2),
                        ttft_ms=round(ttft_ms, 2) if ttft_ms is not None else None,
                        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                        cost_usd=str(cost), fallbacks=entry["fallbacks"], record=self.call_id,
                        error=entry["error"] or None)
        return entry, usage, cost, latency_ms, ttft_ms

    def _span(self, entry: dict, usage: UsageInfo, cost: Decimal, outcome: str) -> None:
        """The call as a span of its own, under the span that was current when it started, with
        OpenTelemetry's GenAI attributes and ours (``quire.llm.*``; ``call_id`` is the ledger
        row's id). Neither the prompt nor the answer is put in it."""
        provider, model = entry["provider"], entry["model"]
        try:
            system = get_provider(provider).gen_ai_provider if provider else None
        except Exception:  # pragma: no cover - a provider removed from the settings meanwhile
            system = None
        spans.record(f"chat {model or self.route.name}", parent=self.trace_parent, start_ns=self.started_ns,
                     end_ns=self.started_ns + int(entry["latency_ms"] * 1e6), attributes={
                         "gen_ai.operation.name": "chat", "gen_ai.provider.name": system,
                         "gen_ai.request.model": model or None,
                         "gen_ai.usage.input_tokens": usage.prompt_tokens,
                         "gen_ai.usage.output_tokens": usage.completion_tokens,
                         "quire.llm.route": self.route.name, "quire.llm.provider": provider or None,
                         "quire.llm.outcome": outcome, "quire.llm.cache_hit": self.hit is not None,
                         "quire.llm.streamed": self.streamed, "quire.llm.cost_usd": float(cost),
                         "quire.llm.tokens_estimated": usage.estimated, "quire.llm.fallbacks": entry["fallbacks"],
                         "quire.llm.ttft_ms": entry["ttft_ms"], "quire.llm.call_id": self.call_id,
                     }, error=entry["error"] if outcome in ("error", "partial") else None)

    def _record_soon(self, entry: dict, cost: Decimal) -> None:
        self.recorded = True
        _record_soon(entry, cost, self.reservation, self.request.api_key)

    async def finish(self) -> DoneEvent:
        entry, usage, cost, latency_ms, ttft_ms = self._entry("ok")
        self._record_soon(entry, cost)
        return DoneEvent(text=self.parts.text(), usage=usage, cost=cost, provider=entry["provider"],
                         model=entry["model"], ttft_ms=ttft_ms, latency_ms=latency_ms, cached=self.hit is not None,
                         usage_record_id=self.call_id, fallbacks=entry["fallbacks"])

    async def fail(self, error: LLMError, *, partial: bool) -> ErrorEvent:
        entry, usage, cost, _, _ = self._entry("partial" if partial else "error", str(error))
        self._record_soon(entry, cost)
        return ErrorEvent(code=error.code, message=error.message if not partial else
                          f"The answer was interrupted: {error.message}", partial=partial,
                          usage_record_id=self.call_id, provider=error.provider or "", error=error,
                          cost=cost, usage=usage)

    def cancel(self) -> None:
        """The consumer went away: record without awaiting (we may be cancelled)."""
        if self.recorded:  # it left after the final event: nothing was cut short
            return
        entry, _, cost, _, _ = self._entry("cancelled", "client went away")
        self._record_soon(entry, cost)


# --- embeddings for callers (POST /v1/embeddings) ------------------------------------------
EMBEDDINGS_ROUTE = "embeddings"  # the route the ledger, metrics and traces file embedding calls under
# Model tokens per model call (at least one text): between two slices of a large request the model
# is free, and a waiting chat question's vector goes first (same process, same model: see
# ModelLock), so it waits for one slice at most (about 0.15 s of one core for MiniLM), not the request.
EMBEDDING_SLICE_TOKENS = 512


def _slices(texts: list[str], counts: list[int]) -> list[list[str]]:
    slices, current, tokens = [], [], 0
    for text, count in zip(texts, counts, strict=True):
        if current and tokens + count > EMBEDDING_SLICE_TOKENS:
            slices.append(current)
            current, tokens = [], 0
        current.append(text)
        tokens += count
    return [*slices, current] if current else slices


@dataclass
class EmbeddingsResult:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str
    provider: str
    cost: Decimal
    usage_record_id: str


def api_embedding_models() -> dict[str, str]:
    """Model names ``POST /v1/embeddings`` accepts, to their ``EMBEDDING_BACKENDS`` alias: every
    alias in ``LLM_API_EMBEDDING_ALIASES``, under its model's id and under its own name."""
    from apps.llm.embeddings import get_embedding_backend

    names: dict[str, str] = {}
    for alias in settings.LLM_API_EMBEDDING_ALIASES:
        names.setdefault(get_embedding_backend(alias).model_id, alias)
        names.setdefault(alias, alias)
    return names


def api_embedding_model_ids() -> list[str]:
    """The embedding models ``GET /v1/models`` lists: each served alias's model id, once."""
    from apps.llm.embeddings import get_embedding_backend

    return list(dict.fromkeys(get_embedding_backend(alias).model_id for alias in settings.LLM_API_EMBEDDING_ALIASES))


async def aembed(*, alias: str, texts: list[str], user=None, api_key=None,
                 kind: str = "document") -> EmbeddingsResult:
    """Embed ``texts`` with the ``alias`` backend for a caller, as the proxy makes a chat call:
    budgets checked first (``BudgetExceeded``), one ledger row (tokens, cost at ``LLM_PRICES`` of
    the model, outcome), the proxy's metrics and a span under the route ``embeddings``.

    A text longer than the model takes raises ``ContextWindowExceeded`` naming it, before any
    budget or model work: the model would silently cut it. The backend's ``EmbeddingError``
    is raised after its call was recorded as an error.
    """
    from apps.llm.embeddings import get_embedding_backend
    from apps.llm.exceptions import ContextWindowExceeded

    started, started_ns, trace_parent = time.perf_counter(), time.time_ns(), spans.parent()
    backend = get_embedding_backend(alias)
    counts = await asyncio.to_thread(backend.count_tokens_batch, texts)  # a tokenizer: CPU, off the loop
    limit = backend.max_input_tokens
    for index, count in enumerate(counts):
        if count > limit:
            raise ContextWindowExceeded(f"input[{index}] has {count} tokens; {backend.model_id} takes at most {limit}.",
                                        provider=backend.provider_name)
    prompt_tokens = sum(counts)
    cost = ledger.call_cost(backend.model_id, prompt_tokens, 0)
    call_id = str(uuid.uuid4())
    reservation = None
    if budgets.may_apply(user=user, api_key=api_key):
        holders = await budgets.holders_for(user=user, api_key=api_key)
        if holders:
            reservation = await budgets.reserve(holders=holders, call_id=call_id, estimate=cost, ttl_s=600)

    def record(outcome: str, error: str = "") -> None:
        spent = cost if outcome == "ok" else Decimal("0")
        latency_ms = (time.perf_counter() - started) * 1000
        provider, model = backend.provider_name, backend.model_id
        entry = _ledger_entry(
            call_id=call_id, route=EMBEDDINGS_ROUTE, user=user, api_key=api_key, provider=provider, model=model,
            prompt_tokens=prompt_tokens, completion_tokens=0, estimated=not backend.exact_token_counts, cost=spent,
            latency_ms=latency_ms, ttft_ms=None, cache_hit=False, streamed=False, outcome=outcome, error=error,
            fallbacks=0)
        _observe_call(EMBEDDINGS_ROUTE, provider, model, outcome, latency_ms, cost=spent,
                      tokens={"prompt": prompt_tokens} if outcome == "ok" else None)
        if trace_parent is not None:
            spans.record(f"embeddings {model}", parent=trace_parent, start_ns=started_ns,
                         end_ns=started_ns + int(latency_ms * 1e6), attributes={
                             "gen_ai.operation.name": "embeddings", "gen_ai.provider.name": backend.gen_ai_provider,
                             "gen_ai.request.model": model, "gen_ai.usage.input_tokens": prompt_tokens,
                             "quire.llm.route": EMBEDDINGS_ROUTE, "quire.llm.provider": provider,
                             "quire.llm.outcome": outcome, "quire.llm.cost_usd": float(spent),
                             "quire.llm.inputs": len(texts), "quire.llm.call_id": call_id,
                         }, error=error if outcome == "error" else None)
        if _log_calls():
            logger.info("llm.call", route=EMBEDDINGS_ROUTE, provider=provider, model=model, outcome=outcome,
                        inputs=len(texts), latency_ms=round(latency_ms, 2), prompt_tokens=prompt_tokens,
                        cost_usd=str(spent), record=call_id, error=error or None)
        _record_soon(entry, spent, reservation, api_key)

    vectors: list[list[float]] = []
    try:
        for part in _slices(texts, counts):
            vectors += await backend.aembed_documents(part, kind=kind)
    except (asyncio.CancelledError, GeneratorExit):
        record("cancelled", "client went away")
        raise
    except Exception as error:  # the backend's EmbeddingError, or anything it did not wrap
        record("error", str(error) or type(error).__name__)
        raise
    record("ok")
    return EmbeddingsResult(vectors=vectors, prompt_tokens=prompt_tokens, model=backend.model_id,
                            provider=backend.provider_name, cost=cost, usage_record_id=call_id)


# --- API keys ---------------------------------------------------------------------------
KEY_PREFIX = "qk_"
hash_api_key = keys.hash_api_key
KeyAdmission = keys.Admission


def new_key_material() -> tuple[str, str, str]:
    """A fresh key: (raw key with 256 bits of entropy, display prefix, SHA-256 to store)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    return raw, raw[:10], hash_api_key(raw)


@transaction.atomic
def api_key_create(*, name: str, user, monthly_budget_usd: Decimal | None = None,
                   requests_per_minute: int | None = None, tokens_per_minute: int | None = None):
    """Create a key; returns ``(api_key, raw_key)``. The raw key is never stored.
    ``requests_per_minute``: None = the site default (``LLM_API_KEY_DEFAULT_RPM``), 0 = unlimited;
    ``tokens_per_minute`` likewise (``LLM_API_KEY_DEFAULT_TPM``)."""
    from apps.llm.models import ApiKey

    raw, prefix, digest = new_key_material()
    key = ApiKey(name=name, user=user, prefix=prefix, key_hash=digest, monthly_budget_usd=monthly_budget_usd,
                 requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
    key.full_clean()
    key.save()
    return key, raw


@transaction.atomic
def api_key_revoke(*, api_key):
    """Deactivate ``api_key``. Every web process refuses it from its next request on:
    the save bumps the key version in Redis once the transaction commits (``apps.llm.keys``)."""
    if api_key.is_active:
        api_key.is_active = False
        api_key.save(update_fields=["is_active"])
    return api_key


async def aapi_key_admit(raw_key: str, *, count: bool = True,
                         chat_request_for: Callable[[object], ChatRequest | None] | None = None) -> KeyAdmission:
    """Authenticate ``raw_key`` and, if ``count``, count the request against the key's
    requests-per-minute limit: one Redis round trip. A key revoked in any process is
    refused at once; ``.key`` is None for unknown or revoked keys, ``.limited`` is True
    when the limit is reached (``.retry_after`` seconds).

    ``chat_request_for(key)`` may build the call the key is for: its response-cache
    read is then made in the same round trip, and ``.got`` holds it (pass it on as
    ``ChatRequest(cache_read=CacheRead(*admission.got))``)."""

    def cache_key_for(key) -> str | None:
        chat = chat_request_for(key)
        return response_cache_key(chat) if chat is not None else None

    return await keys.admit(raw_key, count=count, also_get=cache_key_for if chat_request_for else None)


def forget_cached_keys() -> None:
    keys.forget()
    budgets.forget_cached_limits()
