"""Provider-neutral embedding backend base class and the per-alias registry.

Backends are configured like Django's ``CACHES``::

    EMBEDDING_BACKENDS = {
        "default": {"BACKEND": "apps.llm.embeddings.sentence_transformers.SentenceTransformerBackend",
                    "OPTIONS": {"BATCH_SIZE": 32}},
    }

:func:`get_embedding_backend` resolves an alias once per process (thread-safe)
and returns the same instance afterwards. Constructing a backend is cheap; the
heavy parts (model weights, HTTP client) load lazily on first use.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from array import array
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.core.backends import backend_class, reject_unknown_options
from apps.llm.embeddings import query_cache
from apps.llm.metrics import QUERY_EMBEDDING_CACHE

# Where async callers' embeddings run when the backend has no async client of its own (a model
# in this process): at most four at once.
_MODEL_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="embedding-model")


class EmbeddingBackend:
    """Base class: turns texts into L2-normalised vectors of ``dimensions`` floats.

    Subclasses set ``model_id``, ``dimensions`` and ``max_tokens`` (the model's
    sequence limit *including* ``special_tokens``) and implement
    :meth:`_embed` and :meth:`count_tokens_batch`.
    """

    model_id: str = ""
    dimensions: int = 0
    max_tokens: int = 0
    # Tokens the model adds around every input (BERT: [CLS] and [SEP]).
    special_tokens: int = 0
    # Names accepted in OPTIONS (upper case, like Django's backends).
    option_names: ClassVar[frozenset[str]] = frozenset()
    # Who computes the vectors, as the ledger, metrics and traces name it ("local", "openai").
    provider_name: ClassVar[str] = ""
    # OpenTelemetry's gen_ai.provider.name for this backend's calls.
    gen_ai_provider: ClassVar[str] = "quire"
    # Are count_tokens_batch's counts the model's own (False: an estimate)?
    exact_token_counts: bool = True

    def __init__(self, alias: str = "default", **options: Any):
        reject_unknown_options("EMBEDDING_BACKENDS", alias, type(self), options, self.option_names)
        self.alias = alias
        self.options = options
        # Recent query vectors by text (see embed_query), least recently used first.
        self._queries: OrderedDict[str, array] = OrderedDict()
        self._queries_lock = threading.Lock()

    # --- embedding -----------------------------------------------------------------
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages (batched); one normalised vector per text, in order."""
        if not texts:
            return []
        return self._embed(list(texts), kind="document")

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query.

        The last ``EMBEDDING_QUERY_CACHE_SIZE`` distinct queries are kept in this process
        (3 KB each): a reader paging through results, changing a filter or the mode, or asking
        what others just asked, is not embedded again (the local model spends about 5 ms of a
        core per query). Behind them, every process shares its query vectors through Redis for
        ``EMBEDDING_QUERY_SHARED_CACHE_SECONDS`` (:mod:`apps.llm.embeddings.query_cache`).
        Failures are not kept.
        """
        kept = self._kept_query(text)
        if kept is not None:
            return self._served(kept, "hit")
        key = self._shared_key(text)
        vector, result = self._shared_or_embedded(text, key)
        self._keep_query(text, vector)
        if key and result == "miss":
            query_cache.put(key, vector)
        return self._served(vector, result)

    async def aembed_query(self, text: str, *, shared: bool = True) -> list[float]:
        """:meth:`embed_query` for async code (the same kept and shared queries). A backend that
        calls a service implements :meth:`_aembed` on the event loop; otherwise the model runs in
        a thread. The shared copy is stored without waiting for Redis. ``shared=False``: this
        process's recent queries only, for a caller to whom a miss's Redis round trip costs more
        than the rare hit saves."""
        kept = self._kept_query(text)
        if kept is not None:
            return self._served(kept, "hit")
        key = self._shared_key(text) if shared else None
        if type(self)._aembed is EmbeddingBackend._aembed:
            # A model in this process: its thread reads the shared copy, then embeds on a miss. Read
            # on the loop instead, the reply waited for whatever the loop was doing (a chat request
            # checks its caller meanwhile), and the model started that much later: about 1.5 ms
            # more retrieval in bench sse with the local model.
            run = functools.partial(contextvars.copy_context().run, self._shared_or_embedded, text, key)
            vector, result = await asyncio.get_running_loop().run_in_executor(_MODEL_THREADS, run)
        else:
            found = await query_cache.aget(key, self.dimensions) if key else None
            vector, result = (found, "shared_hit") if found is not None else (
                (await self._aembed([text], kind="query"))[0], "miss")
        self._keep_query(text, vector)
        if key and result == "miss":
            query_cache.aput_soon(key, vector)
        return self._served(vector, result)

    def _shared_or_embedded(self, text: str, key: str | None) -> tuple[list[float], str]:
        shared = query_cache.get(key, self.dimensions) if key else None
        if shared is not None:
            return shared, "shared_hit"
        return self._embed([text], kind="query")[0], "miss"

    def _shared_key(self, text: str) -> str | None:
        if query_cache.ttl() <= 0:
            return None
        return query_cache.cache_key(model_id=self.model_id, dimensions=self.dimensions, text=text)

    @staticmethod
    def _served(vector: list[float], result: str) -> list[float]:
        QUERY_EMBEDDING_CACHE.labels(result).inc()
        return vector

    async def aembed_documents(self, texts: list[str], *, kind: str = "document") -> list[list[float]]:
        """:meth:`embed_documents` for async code (``kind`` "query" embeds them as search
        queries, for a model that tells the two apart), without the kept query vectors."""
        if not texts:
            return []
        return await self._aembed(list(texts), kind=kind)

    def _kept_query(self, text: str) -> list[float] | None:
        if settings.EMBEDDING_QUERY_CACHE_SIZE <= 0:
            return None
        with self._queries_lock:
            kept = self._queries.get(text)
            if kept is not None:
                self._queries.move_to_end(text)
        return None if kept is None else kept.tolist()

    def _keep_query(self, text: str, vector: list[float]) -> None:
        size = settings.EMBEDDING_QUERY_CACHE_SIZE
        if size <= 0:
            return
        with self._queries_lock:
            self._queries[text] = array("d", vector)
            self._queries.move_to_end(text)
            while len(self._queries) > size:
                self._queries.popitem(last=False)

    def clear_query_cache(self) -> None:
        """Forget the kept query vectors (``evaluate_search`` times every query as a new one)."""
        with self._queries_lock:
            self._queries.clear()

    def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        raise NotImplementedError

    async def _aembed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        """The model in one of a few threads of its own (the loop's default executor would let
        a burst of questions run six at once on this machine's two cores)."""
        run = functools.partial(contextvars.copy_context().run, self._embed, texts, kind=kind)  # logs, traces
        return await asyncio.get_running_loop().run_in_executor(_MODEL_THREADS, run)

    # --- tokens --------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Model tokens in ``text``, without the special tokens the model adds."""
        return self.count_tokens_batch([text])[0]

    def count_tokens_batch(self, texts: list[str]) -> list[int]:
        """Like :meth:`count_tokens` for many texts in one call (chunking uses this)."""
        raise NotImplementedError

    @property
    def max_input_tokens(self) -> int:
        """Tokens available for text in one input (``max_tokens`` minus special tokens)."""
        return self.max_tokens - self.special_tokens

    def describe(self) -> dict:
        return {"alias": self.alias, "backend": type(self).__name__, "model_id": self.model_id,
                "dimensions": self.dimensions, "max_tokens": self.max_tokens}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r} model={self.model_id!r} dims={self.dimensions}>"


_lock = threading.Lock()
_instances: dict[str, EmbeddingBackend] = {}


def get_embedding_backend(alias: str = "default") -> EmbeddingBackend:
    """The process-wide backend for ``alias`` (created on first call, then cached)."""
    backend = _instances.get(alias)
    if backend is not None:
        return backend
    with _lock:
        backend = _instances.get(alias)
        if backend is None:
            backend = _instances[alias] = _create(alias)
    return backend


def _create(alias: str) -> EmbeddingBackend:
    configs = getattr(settings, "EMBEDDING_BACKENDS", {})
    if alias not in configs:
        raise ImproperlyConfigured(f"EMBEDDING_BACKENDS has no alias {alias!r} (have: {sorted(configs)})")
    config = configs[alias]
    backend_cls = backend_class("EMBEDDING_BACKENDS", alias, config, EmbeddingBackend)
    return backend_cls(alias, **config.get("OPTIONS", {}))


def reset_embedding_backends() -> None:
    """Forget cached instances (tests that change EMBEDDING_BACKENDS call this)."""
    with _lock:
        _instances.clear()
