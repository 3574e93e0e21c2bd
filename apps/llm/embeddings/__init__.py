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

# Warm-up of each alias's model in this process: "loading", "ready" or "failed".
WARM_UP_STATE: dict[str, str] = {}


def warm_up_in_background(alias: str = "default") -> None:
    """Load the backend's model in a daemon thread, so a web process's first
    query does not wait for the runtime and the weights (about 0.3 s to load the
    ONNX export, ~10 s for torch, or the export itself on a machine's first start;
    queries arriving meanwhile wait on the backend's lock instead of loading a
    second copy).

    ``/readyz`` reports the process unready until the load is done (see
    :func:`check_warm_up`): importing torch holds the GIL for seconds, so
    requests served meanwhile stall (the proxy's cache-hit p99 went from
    ~2 to 10-12 ms when a benchmark started during the load). Once loaded,
    the model's objects are moved out of the cyclic GC's reach
    (``gc.freeze()``), as config/asgi.py does for everything imported before.
    """
    import gc
    import threading

    from apps.core.logging import get_logger

    def load() -> None:
        try:
            backend = get_embedding_backend(alias)
            if hasattr(backend, "load"):
                backend.load()
        except Exception:  # start-up must not fail on a warm-up; the first query will report it
            WARM_UP_STATE[alias] = "failed"
            get_logger("quire.embeddings").exception("embedding.warm_up_failed", alias=alias)
            return
        gc.collect()
        gc.freeze()
        WARM_UP_STATE[alias] = "ready"

    WARM_UP_STATE[alias] = "loading"
    threading.Thread(target=load, name=f"embedding-warm-up-{alias}", daemon=True).start()


def check_warm_up() -> tuple[bool, dict]:
    """Readiness check: every model this process started warming is loaded.
    Processes that warm nothing (workers, commands) are ready."""
    ok = all(state == "ready" for state in WARM_UP_STATE.values())
    return ok, {"models": dict(WARM_UP_STATE)}


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
