"""Embedding backends: local sentence-transformers, OpenAI-compatible HTTP, and a
deterministic test backend. Callers use :func:`get_embedding_backend`::

    backend = get_embedding_backend()          # the "default" alias
    vectors = backend.embed_documents(texts)   # list[list[float]], L2-normalised
    query = backend.embed_query("how do I ...")
"""

from apps.llm.embeddings.base import EmbeddingBackend, get_embedding_backend, reset_embedding_backends
from apps.llm.embeddings.exceptions import (
    EmbeddingBadResponse,
    EmbeddingError,
    EmbeddingRateLimited,
    EmbeddingTimeout,
    EmbeddingUnavailable,
)

__all__ = [
    "EmbeddingBackend",
    "EmbeddingBadResponse",
    "EmbeddingError",
    "EmbeddingRateLimited",
    "EmbeddingTimeout",
    "EmbeddingUnavailable",
    "get_embedding_backend",
    "reset_embedding_backends",
]
