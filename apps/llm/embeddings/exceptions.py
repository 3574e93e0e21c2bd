"""The embedding error family, part of the one LLM error family
(``apps.llm.exceptions``): every embedding backend raises only these, so callers
may catch either ``EmbeddingError`` or ``LLMError``.

``transient`` says whether trying again later may succeed; the embedding task
retries transient errors (with backoff) and fails permanent ones at once. It is
separate from ``LLMError.retryable`` (a router decision for interactive calls):
a background task can afford to wait out a timeout.
"""

from __future__ import annotations

from apps.llm.exceptions import LLMBadRequest, LLMError, LLMRateLimited, LLMTimeout, LLMUnavailable


class EmbeddingError(LLMError):
    """The embedding backend could not produce embeddings."""

    code = "embedding_error"
    transient = False

    def __init__(self, message: str, *, backend: str = "", retry_after: float | None = None,
                 status: int | None = None):
        super().__init__(message, provider=backend or None, status=status)
        self.backend = backend
        self.retry_after = retry_after


class EmbeddingTimeout(EmbeddingError, LLMTimeout):
    """The embedding provider did not answer in time."""

    transient = True


class EmbeddingRateLimited(EmbeddingError, LLMRateLimited):
    """The embedding provider is rate limiting us."""

    transient = True


class EmbeddingUnavailable(EmbeddingError, LLMUnavailable):
    """Embedding provider down, 5xx, connection refused."""

    transient = True


class EmbeddingBadResponse(EmbeddingError, LLMBadRequest):
    """The provider rejected the request (4xx) or answered with something unusable."""
