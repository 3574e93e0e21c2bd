"""Walking a route's provider chain: breakers, timeouts, retries, fallback.

Before the first token of an answer, any provider failure is retried (connect
errors, 429 and 5xx, with exponential backoff and jitter, honouring
Retry-After up to ``max_retry_after``) and then handed to the next provider of
the route; a breaker that is open is skipped without a connection attempt.
After the first token has been yielded a failure ends the answer with
:class:`MidStreamFailure`: text from two providers is never spliced together.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from apps.core.logging import get_logger
from apps.llm.backends.base import BackendCall, Delta, Usage
from apps.llm.breaker import CircuitBreaker, Permit
from apps.llm.conf import RouteConfig, get_provider
from apps.llm.exceptions import (
    ContextWindowExceeded,
    LLMBadRequest,
    LLMError,
    LLMRateLimited,
    LLMTimeout,
    LLMUnavailable,
)
from apps.llm.metrics import PROVIDER_FAILURES

logger = get_logger("quire.llm.router")


class MidStreamFailure(Exception):
    """The provider failed after its first token reached the caller."""

    def __init__(self, error: LLMError):
        super().__init__(str(error))
        self.error = error


@dataclass
class Attempt:
    """What the chain walk found out, filled in as it goes."""

    provider: str = ""
    model: str = ""
    model_backed: bool = True
    usage: Usage | None = None
    first_token_at: float | None = None
    failures: list[str] = field(default_factory=list)
    fallbacks: int = 0


def _backoff(policy, attempt: int, error: LLMError) -> float | None:
    """Seconds to wait before retrying, or None to give up on this provider."""
    if isinstance(error, LLMRateLimited) and error.retry_after is not None:
        return error.retry_after if error.retry_after <= policy.max_retry_after else None
    return min(policy.backoff_max, policy.backoff_base * (2 ** attempt)) * random.uniform(0.5, 1.0)


async def _completion_as_stream(backend, call: BackendCall) -> AsyncIterator[Delta | Usage]:
    completion = await backend.complete(call)
    if completion.text:
        yield Delta(completion.text)
    if completion.usage is not None:
        yield completion.usage


async def walk(route: RouteConfig, *, messages: list[dict], params: dict, passages: list[dict] | None,
               stream: bool, attempt: Attempt, first_permit: Permit | None = None) -> AsyncIterator[str]:
    """Yield the answer's text pieces from the first provider that answers.

    ``first_permit``: the first provider's breaker permit, if the caller already has it
    (:func:`apps.llm.services.stream_chat` reads a closed breaker with the cache).

    Raises the last :class:`LLMError` if every provider failed before answering
    (or ``LLMBadRequest`` at once: another provider would reject it too), and
    :class:`MidStreamFailure` if the answering provider failed mid-answer.
    """
    last_error: LLMError | None = None
    timeouts = route.timeouts
    for position, link in enumerate(route.chain):
        backend = get_provider(link.provider)
        model = link.model or backend.default_model
        breaker = CircuitBreaker(link.provider) if backend.model_backed else None
        permit = None
        if breaker is not None:
            permit = first_permit if position == 0 and first_permit is not None else await breaker.allow()
            if not permit.allowed:
                attempt.failures.append(f"{link.provider}: circuit open")
                last_error = LLMUnavailable("circuit breaker open", provider=link.provider)
                continue
        call = BackendCall(messages=messages, model=model, params={**params, **link.params},
                           connect_timeout=timeouts.connect, passages=passages)
        attempt.provider, attempt.model, attempt.model_backed = link.provider, model, backend.model_backed
        attempt.fallbacks = position
        for try_number in range(route.retry.attempts + 1):
            started = time.monotonic()
            first_deadline = started + (timeouts.first_token if stream else timeouts.total)
            total_deadline = started + timeouts.total
            yielded = False
            source = backend.stream(call) if stream else _completion_as_stream(backend, call)
            try:
                async with contextlib.aclosing(source):
                    while True:
                        try:
                            async with asyncio.timeout_at(_loop_time(total_deadline if yielded else first_deadline)):
                                item = await anext(source)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            which = "total" if yielded else ("first-token" if stream else "total")
                            raise LLMTimeout(f"{which} timeout", provider=link.provider) from None
                        if isinstance(item, Delta):
                            if not yielded:
                                yielded = True
                                attempt.first_token_at = time.perf_counter()
                            yield item.text
                        else:
                            attempt.usage = item
            except LLMError as error:
                error.provider = error.provider or link.provider
                PROVIDER_FAILURES.labels(link.provider, error.code).inc()
                if yielded:
                    if breaker is not None and error.counts_against_provider:
                        await breaker.record_failure()
                    raise MidStreamFailure(error) from error
                last_error = error
                if isinstance(error, LLMBadRequest):
                    if breaker is not None:
                        await breaker.record_success(permit)  # it answered; the request was the problem
                    if isinstance(error, ContextWindowExceeded):
                        attempt.failures.append(str(error))
                        break  # a bigger window further down the chain may fit
                    raise
                delay = _backoff(route.retry, try_number, error) if error.retryable else None
                if delay is not None and try_number < route.retry.attempts and (
                    permit is None or permit.state == "closed"  # a half-open probe gets one try
                ):
                    logger.info("llm.retry", provider=link.provider, error=str(error), delay_s=round(delay, 3))
                    await asyncio.sleep(delay)
                    continue
                attempt.failures.append(str(error))
                if breaker is not None:
                    await breaker.record_failure()
                logger.warning("llm.provider_failed", provider=link.provider, error=str(error))
                break
            else:
                if breaker is not None:
                    await breaker.record_success(permit)
                return
    raise last_error or LLMUnavailable("no provider answered")


def _loop_time(deadline_monotonic: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline_monotonic - time.monotonic())
