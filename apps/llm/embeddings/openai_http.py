"""OpenAI-compatible ``POST /v1/embeddings`` over httpx (OpenAI, vLLM, Ollama,
llama.cpp server, text-embeddings-inference...).

Retries 429 and 5xx (and connection errors / timeouts) with exponential backoff
and full jitter, honouring ``Retry-After``; every other failure is a clear
:class:`EmbeddingError` naming the status and the provider's message.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
from django.core.exceptions import ImproperlyConfigured

from apps.core.logging import get_logger
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
    punctuation are counted, and ``SPECIAL_TOKENS`` default 0).
    """

    option_names = frozenset({
        "BASE_URL", "MODEL", "DIMENSIONS", "MAX_TOKENS", "API_KEY", "TIMEOUT", "MAX_RETRIES",
        "BACKOFF_BASE", "BACKOFF_MAX", "BATCH_SIZE", "SEND_DIMENSIONS", "TOKENIZER_FILE", "SPECIAL_TOKENS",
    })

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

    def _post_batch(self, batch: list[str]) -> list[list[float]]:
        payload: dict = {"model": self.model_id, "input": batch, "encoding_format": "float"}
        if self.send_dimensions:
            payload["dimensions"] = self.dimensions
        attempt = 0
        while True:
            try:
                response = self.client.post("/embeddings", json=payload)
                error = self._error_for(response)
            except httpx.TimeoutException as exc:
                error = EmbeddingTimeout(f"{self.base_url}/embeddings timed out after {self.timeout}s: {exc}",
                                         backend=self.alias)
            except httpx.HTTPError as exc:
                error = EmbeddingUnavailable(f"{self.base_url}/embeddings unreachable: {exc}", backend=self.alias)
            if error is None:
                return self._parse(response, len(batch))
            if not error.transient or attempt >= self.max_retries:
                raise error
            delay = self._backoff(attempt, error.retry_after)
            logger.warning("embeddings.retry", alias=self.alias, attempt=attempt + 1, delay_s=round(delay, 3),
                           error=str(error))
            time.sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        # Full jitter: uniformly in [0, base * 2^attempt], capped.
        return random.uniform(0, min(self.backoff_max, self.backoff_base * (2 ** attempt)))

    def _error_for(self, response: httpx.Response) -> EmbeddingError | None:
        if response.status_code < 400:
            return None
        try:
            body = response.json()
            message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        except ValueError:
            message = None
        message = f"{self.base_url}/embeddings returned HTTP {response.status_code}: {message or response.text[:300]}"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if response.status_code == 429:
            return EmbeddingRateLimited(message, backend=self.alias, retry_after=retry_after, status=429)
        if response.status_code >= 500:
            return EmbeddingUnavailable(message, backend=self.alias, retry_after=retry_after,
                                        status=response.status_code)
        return EmbeddingBadResponse(message, backend=self.alias, status=response.status_code)

    def _parse(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in data]
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


def _normalise(vector: list[float]) -> list[float]:
    norm = sum(v * v for v in vector) ** 0.5
    return [v / norm for v in vector] if norm else vector
