"""The provider-neutral backend contract.

A backend turns a :class:`BackendCall` into text deltas and (when the provider
reports it) usage, and translates every provider failure into the
``apps.llm.exceptions`` family. Timeouts on the first token and on the whole
answer, retries, fallback and circuit breaking are the router's job, so every
backend gets them the same way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp

from apps.core.backends import reject_unknown_options
from apps.llm import runtime
from apps.llm.exceptions import ContextWindowExceeded, LLMBadRequest, LLMRateLimited, LLMUnavailable


@dataclass
class BackendCall:
    messages: list[dict]
    model: str
    params: dict  # model params, ``max_tokens`` included
    connect_timeout: float = 10.0
    passages: list[dict] | None = None


@dataclass
class Delta:
    """A piece of answer text."""

    text: str


@dataclass
class Usage:
    """Token usage as the provider reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    text: str
    usage: Usage | None = None
    finish_reason: str | None = None
    extra: dict = field(default_factory=dict)


class ChatBackend:
    """Base class. Subclasses declare ``OPTIONS`` (name -> default) and implement
    :meth:`stream` and :meth:`complete`. Unknown options are a configuration error."""

    OPTIONS: dict = {}
    #: False for backends that need no model (no price, never cached)
    model_backed = True
    #: ``gen_ai.provider.name`` on the call's span (OpenTelemetry's GenAI conventions)
    gen_ai_provider = "quire"

    def __init__(self, *, alias: str, options: dict):
        reject_unknown_options("LLM_PROVIDERS", alias, type(self), options, self.OPTIONS)
        self.alias = alias
        self.options = {**self.OPTIONS, **options}

    @property
    def default_model(self) -> str:
        return self.options.get("model") or self.alias

    async def stream(self, call: BackendCall) -> AsyncIterator[Delta | Usage]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    async def complete(self, call: BackendCall) -> Completion:  # pragma: no cover - abstract
        raise NotImplementedError


class HTTPChatBackend(ChatBackend):
    """Shared HTTP plumbing over the process's pooled aiohttp session."""

    def headers(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def url(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def post(self, body: dict, call: BackendCall):
        """POST ``body``; yields the response once it is known to be a 2xx."""
        timeout = aiohttp.ClientTimeout(total=None, connect=call.connect_timeout, sock_connect=call.connect_timeout)
        try:
            async with runtime.http_session().post(
                self.url(), data=json.dumps(body), headers=self.headers(), timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise await self.http_error(response)
                yield response
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise LLMUnavailable(f"connection dropped: {exc.__class__.__name__}", provider=self.alias) from exc
        except aiohttp.ClientResponseError as exc:
            raise LLMUnavailable(f"bad response: {exc.message}", provider=self.alias, status=exc.status) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # Connection refused/reset, DNS, connect timeout.
            raise LLMUnavailable(f"connect failed: {exc.__class__.__name__}", provider=self.alias) from exc

    async def http_error(self, response: aiohttp.ClientResponse):
        try:
            text = (await response.text())[:500]
        except (aiohttp.ClientError, UnicodeDecodeError):
            text = ""
        status = response.status
        if status == 429:
            return LLMRateLimited(f"rate limited (429) {text}", provider=self.alias, status=status,
                                  retry_after=parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500 or status in (401, 403, 404, 408, 409):
            # Server faults and provider misconfiguration: another provider may serve.
            return LLMUnavailable(f"HTTP {status} {text}".strip(), provider=self.alias, status=status)
        lowered = text.lower()
        if "context" in lowered and ("length" in lowered or "window" in lowered) or "too long" in lowered:
            return ContextWindowExceeded(f"HTTP {status} {text}", provider=self.alias, status=status)
        return LLMBadRequest(f"HTTP {status} {text}", provider=self.alias, status=status)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds; HTTP dates are rare from LLM APIs)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        from django.utils import timezone

        try:
            return max(0.0, (parsedate_to_datetime(value) - timezone.now()).total_seconds())
        except (TypeError, ValueError):
            return None


async def sse_data(response: aiohttp.ClientResponse, provider: str) -> AsyncIterator[dict | str]:
    """Incrementally parsed ``data:`` payloads of a server-sent event stream:
    JSON objects, or the literal ``"[DONE]"``. A line that is not JSON is a
    malformed chunk (``LLMUnavailable``)."""
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # event:, id:, comments, blank separators
        payload = line[5:].strip()
        del raw, line  # nothing of a chunk is held while the next one is awaited
        if payload == b"[DONE]":
            yield "[DONE]"
            return
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise LLMUnavailable(f"malformed stream chunk: {payload[:80]!r}", provider=provider) from exc
        del payload
        yield data
        del data
