"""The embedding error family. Every backend raises only these.

``transient`` says whether trying again later may succeed; the embedding task
retries transient errors (with backoff) and fails permanent ones at once.
"""

from __future__ import annotations


class EmbeddingError(Exception):
    """Base class: the backend could not produce embeddings."""

    transient = False

    def __init__(self, message: str, *, backend: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.backend = backend
        self.retry_after = retry_after


class EmbeddingTimeout(EmbeddingError):
    transient = True


class EmbeddingRateLimited(EmbeddingError):
    transient = True


class EmbeddingUnavailable(EmbeddingError):
    """Provider down, 5xx, connection refused: transient."""

    transient = True


class EmbeddingBadResponse(EmbeddingError):
    """The provider answered with something unusable (wrong shape, wrong dimension, 4xx)."""
