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


def warm_up_in_background(alias: str = "default") -> None:
    """Load the backend's model in a daemon thread, so a web process's first
    query does not wait ~10 s for torch and the weights (queries arriving
    meanwhile wait on the backend's lock instead of loading a second copy)."""
    import threading

    from apps.core.logging import get_logger

    def load() -> None:
        try:
            backend = get_embedding_backend(alias)
            if hasattr(backend, "load"):
                backend.load()
        except Exception:  # start-up must not fail on a warm-up; the first query will report it
            get_logger("quire.embeddings").exception("embedding.warm_up_failed", alias=alias)

    threading.Thread(target=load, name=f"embedding-warm-up-{alias}", daemon=True).start()


__all__ = [
    "EmbeddingBackend",
    "EmbeddingBadResponse",
    "EmbeddingError",
    "EmbeddingRateLimited",
    "EmbeddingTimeout",
    "EmbeddingUnavailable",
    "get_embedding_backend",
    "reset_embedding_backends",
    "warm_up_in_background",
]
