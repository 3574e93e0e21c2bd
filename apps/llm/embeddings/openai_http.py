"""OpenAI-compatible ``POST /v1/embeddings`` over httpx (OpenAI, vLLM, Ollama,
llama.cpp server, text-embeddings-inference...); from async code over the loop's aiohttp
session (``aembed_query``).

Retries 429 and 5xx (and connection errors / timeouts) with exponential backoff
and full jitter, honouring ``Retry-After``; every other failure is a clear
:class:`EmbeddingError` naming the status and the provider's message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import threading
import time
from array import array

import aiohttp
import httpx
from django.core.exceptions import ImproperlyConfigured

from apps.core.logging import get_logger
from apps.llm import runtime
from apps.llm.backends.base import parse_retry_after
from apps.llm.embeddings.base import EmbeddingBackend
from apps.llm.embeddings.exceptions import (
    EmbeddingBadResponse,
    EmbeddingError,
    EmbeddingRateLimited,
    EmbeddingTimeout,
    EmbeddingUnavailable,
)
from apps.llm.embeddings.testing import TOKEN_RE

logger = get_logger("quire.llm.embeddings")


class OpenAIHTTPBackend(EmbeddingBackend):
    """OPTIONS: ``BASE_URL`` (e.g. ``https://api.openai.com/v1``), ``MODEL``,
    ``DIMENSIONS`` and ``MAX_TOKENS`` (both required: they are part of the
    schema contract), ``API_KEY``, ``TIMEOUT`` (s, default 30), ``MAX_RETRIES``
    (default 4), ``BACKOFF_BASE`` / ``BACKOFF_MAX`` (s, default 0.5 / 20),
    ``BATCH_SIZE`` (default 64), ``SEND_DIMENSIONS`` (send ``dimensions`` in the
    request, for models that support shortening), ``TOKENIZER_FILE`` (a
    Hugging Face ``tokenizer.json`` for exact counts; otherwise words and
    punctuation are counted, and ``SPECIAL_TOKENS`` default 0), ``ENCODING_FORMAT``
    (``base64``, the default, as OpenAI's own SDK asks: each vector comes back as its
    float32 bytes, a quarter of the JSON floats' size and about 7x cheaper to read; or
    ``float``, for a server that refuses base64). A server that ignores the format and
    answers floats anyway is read all the same.
    """

    option_names = frozenset({
        "BASE_URL", "MODEL", "DIMENSIONS", "MAX_TOKENS", "API_KEY", "TIMEOUT", "MAX_RETRIES",
        "BACKOFF_BASE", "BACKOFF_MAX", "BATCH_SIZE", "SEND_DIMENSIONS", "TOKENIZER_FILE", "SPECIAL_TOKENS",
        "ENCODING_FORMAT",
    })
    provider_name = "openai"
    gen_ai_provider = "openai"

    def __init__(self, alias: str = "default", **options):
        super().__init__(alias, **options)
        missing = [k for k in ("BASE_URL", "MODEL", "DIMENSIONS", "MAX_TOKENS") if not options.get(k)]
        if missing:
            raise ImproperlyConfigured(f"EMBEDDING_BACKENDS[{alias!r}]: OPTIONS {missing} are required")
        self.base_url = options["BASE_URL"].rstrip("/")
        self.model_id = options["MODEL"]
        self.dimensions = int(options["DIMENSIONS"])
        self.max_tokens = int(options["MAX_TOKENS"])
        self.special_tokens = int(options.get("SPECIAL_TOKENS", 0))
        self.api_key = options.get("API_KEY", "")
        self.timeout = float(options.get("TIMEOUT", 30))
        self.max_retries = int(options.get("MAX_RETRIES", 4))
        self.backoff_base = float(options.get("BACKOFF_BASE", 0.5))
        self.backoff_max = float(options.get("BACKOFF_MAX", 20))
        self.batch_size = int(options.get("BATCH_SIZE", 64))
        self.send_dimensions = bool(options.get("SEND_DIMENSIONS", False))
        self.tokenizer_file = options.get("TOKENIZER_FILE")
        self.exact_token_counts = bool(self.tokenizer_file)  # otherwise words and punctuation, an estimate
        self.encoding_format = options.get("ENCODING_FORMAT") or "base64"
        if self.encoding_format not in ("base64", "float"):
            raise ImproperlyConfigured(f"EMBEDDING_BACKENDS[{alias!r}]: ENCODING_FORMAT must be base64 or float, "
                                       f"not {self.encoding_format!r}")
        self._client: httpx.Client | None = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                    self._client = httpx.Client(
                        base_url=self.base_url, headers=headers,
                        timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0)),
                    )
        return self._client

    def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(self._post_batch(texts[start: start + self.batch_size]))
        return vectors

    def _payload(self, batch: list[str]) -> dict:
        payload: dict = {"model": self.model_id, "input": batch, "encoding_format": self.encoding_format}
        if self.send_dimensions:
            payload["dimensions"] = self.dimensions
        return payload

    def _post_batch(self, batch: list[str]) -> list[list[float]]:
        payload = self._payload(batch)
        attempt = 0
        while True:
            try:
                response = self.client.post("/embeddings", json=payload)
                error = self._error_for(response.status_code, response.content, response.headers)
            except httpx.TimeoutException as exc:
                error = self._timed_out(exc)
            except httpx.HTTPError as exc:
                error = self._unreachable(exc)
            if error is None:
                return self._parse(response.content, len(batch))
            time.sleep(self._retry_delay(error, attempt))
            attempt += 1

    async def _aembed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        """On the event loop, through the loop's pooled aiohttp session (the proxy's): a query
        embedded by an async view waits for no thread (apps.chat.views)."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._apost_batch(texts[start: start + self.batch_size]))
        return vectors

    async def _apost_batch(self, batch: list[str]) -> list[list[float]]:
        payload = self._payload(batch)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 5.0))
        attempt = 0
        while True:
            try:
                async with runtime.http_session().post(f"{self.base_url}/embeddings", json=payload, headers=headers,
                                                       timeout=timeout) as response:
                    body = await response.read()
                    error = self._error_for(response.status, body, response.headers)
            except TimeoutError as exc:
                error = self._timed_out(exc)
            except (aiohttp.ClientError, OSError) as exc:
                error = self._unreachable(exc)
            if error is None:
                return self._parse(body, len(batch))
            await asyncio.sleep(self._retry_delay(error, attempt))
            attempt += 1

    def _timed_out(self, exc: Exception) -> EmbeddingError:
        return EmbeddingTimeout(f"{self.base_url}/embeddings timed out after {self.timeout}s: {exc}",
                                backend=self.alias)

    def _unreachable(self, exc: Exception) -> EmbeddingError:
        return EmbeddingUnavailable(f"{self.base_url}/embeddings unreachable: {exc}", backend=self.alias)

    def _retry_delay(self, error: EmbeddingError, attempt: int) -> float:
        """How long to wait before retrying after ``error``; raises it if it is final."""
        if not error.transient or attempt >= self.max_retries:
            raise error
        delay = self._backoff(attempt, error.retry_after)
        logger.warning("embeddings.retry", alias=self.alias, attempt=attempt + 1, delay_s=round(delay, 3),
                       error=str(error))
        return delay

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        # Full jitter: uniformly in [0, base * 2^attempt], capped.
        return random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** attempt)))

    def _error_for(self, status: int, body: bytes, headers) -> EmbeddingError | None:
        if status < 400:
            return None
        try:
            error = json.loads(body).get("error")
            message = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            message = None
        message = f"{self.base_url}/embeddings returned HTTP {status}: {message or body[:300].decode(errors='replace')}"
        retry_after = parse_retry_after(headers.get("retry-after"))
        if status == 429:
            return EmbeddingRateLimited(message, backend=self.alias, retry_after=retry_after, status=429)
        if status >= 500:
            return EmbeddingUnavailable(message, backend=self.alias, retry_after=retry_after, status=status)
        return EmbeddingBadResponse(message, backend=self.alias, status=status)

    def _parse(self, body: bytes, expected: int) -> list[list[float]]:
        try:
            data = sorted(json.loads(body)["data"], key=lambda item: item["index"])
            vectors = [_vector(item["embedding"]) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingBadResponse(f"{self.base_url}/embeddings: malformed response: {exc}",
                                       backend=self.alias) from exc
        if len(vectors) != expected:
            raise EmbeddingBadResponse(f"asked for {expected} embeddings, got {len(vectors)}", backend=self.alias)
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise EmbeddingBadResponse(
                    f"model {self.model_id!r} returned {len(vector)}-d vectors, configured for {self.dimensions}",
                    backend=self.alias)
        return [_normalise(v) for v in vectors]

    def count_tokens_batch(self, texts: list[str]) -> list[int]:
        if self.tokenizer_file:
            with self._lock:
                if self._tokenizer is None:
                    from tokenizers import Tokenizer

                    tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
                    tokenizer.no_truncation()
                    tokenizer.no_padding()
                    self._tokenizer = tokenizer
                encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
            return [len(e.ids) for e in encodings]
        return [len(TOKEN_RE.findall(t)) for t in texts]


def _vector(embedding: str | list) -> list[float]:
    """One embedding as sent: base64 of little-endian float32s, or a JSON list of numbers
    (a malformed one raises ValueError, binascii.Error included)."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding, validate=True)
        if len(raw) % 4:
            raise ValueError(f"base64 embedding of {len(raw)} bytes is not float32s")
        values = array("f", raw)
        if sys.byteorder != "little":  # pragma: no cover - the wire format is little-endian
            values.byteswap()
        return values.tolist()
    return [float(x) for x in embedding]


def _normalise(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector] if norm else vector
