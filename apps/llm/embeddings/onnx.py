"""The local sentence-transformers model (all-MiniLM-L6-v2) on ONNX Runtime: the same
vectors as :class:`~apps.llm.embeddings.sentence_transformers.SentenceTransformerBackend`
(tests hold them within 1e-5; 1.7e-7 measured) for about half the CPU.

On this project's machine (docs/benchmarks.md) a search query or chat question took
8-9.5 ms with sentence-transformers on torch and 3.1 ms on ONNX Runtime (two threads;
10.9 -> 5.0 ms on one, as a web process runs it), and a batch of passages about half
the time. The graph runs in one call that releases the GIL, where torch makes a Python
call per operation.

The model is exported to ONNX once per machine, from the sentence-transformers
directory (torch and onnx are imported for that export only), into ``CACHE_DIR``
under a name fingerprinting the model's files; every later process loads the file and
never imports torch. Two processes exporting at once each write a file of their own
and rename it into place; a file the runtime cannot read is exported again, once.
``python manage.py prepare_embedding_models`` does it ahead of time (the Docker image
runs it at build).

Only what the ONNX graph cannot hold is done here: the model's own tokenizer (Rust
``tokenizers``, truncating at the model's sequence limit, as sentence-transformers
does), then mean pooling over the attention mask and L2 normalisation, the
``Pooling`` and ``Normalize`` modules of the model directory. A directory with other
modules or another pooling is refused at start-up (use the torch backend for it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import warnings
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.core.logging import get_logger
from apps.llm.embeddings.exceptions import EmbeddingError
from apps.llm.embeddings.sentence_transformers import SentenceTransformerBackend

logger = get_logger("quire.embeddings")

# Bumped when the export itself changes (inputs, outputs, opset): old files are then not reused.
EXPORT_VERSION = 1
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_FINGERPRINTED = ("config.json", "tokenizer.json", "modules.json", "model.safetensors", "pytorch_model.bin")


class OnnxBackend(SentenceTransformerBackend):
    """Normalised, mean-pooled vectors of a local sentence-transformers model, on ONNX Runtime.

    OPTIONS: ``MODEL_PATH``, ``MODEL_ID``, ``BATCH_SIZE`` as for the torch backend;
    ``THREADS`` (ONNX Runtime's intra-op threads; default: its choice, every core);
    ``CACHE_DIR`` (where exports are kept; default ``EMBEDDING_MODEL_CACHE_DIR``);
    ``ONNX_PATH`` (an exported file to use, or to export to, instead of one in ``CACHE_DIR``).
    """

    option_names = frozenset({"MODEL_PATH", "MODEL_ID", "BATCH_SIZE", "THREADS", "CACHE_DIR", "ONNX_PATH"})

    def __init__(self, alias: str = "default", **options):
        super().__init__(alias, **options)
        self._check_mean_pooled()
        cache_dir = Path(options.get("CACHE_DIR") or settings.EMBEDDING_MODEL_CACHE_DIR)
        self.onnx_path = Path(options["ONNX_PATH"]) if options.get("ONNX_PATH") else (
            cache_dir / f"{_slug(self.model_id)}-{self.fingerprint()}.onnx")
        self._model_tokenizers = threading.local()
        self._pid = os.getpid()
        self._warned_fork = False

    def _check_mean_pooled(self) -> None:
        try:
            modules = json.loads((self.model_path / "modules.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImproperlyConfigured(f"EMBEDDING_BACKENDS[{self.alias!r}]: {self.model_path}: {exc}") from exc
        kinds = [module.get("type", "").rsplit(".", 1)[-1] for module in modules]
        modes = sorted(key for key, value in self.pooling_config.items() if key.startswith("pooling_mode") and value)
        if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]) or \
                modes != ["pooling_mode_mean_tokens"]:
            raise ImproperlyConfigured(
                f"EMBEDDING_BACKENDS[{self.alias!r}]: {self.model_path} has modules {kinds} and pooling {modes}; "
                "the ONNX backend runs Transformer + mean Pooling (+ Normalize) only: use "
                "apps.llm.embeddings.sentence_transformers.SentenceTransformerBackend for this model")

    def fingerprint(self) -> str:
        """Names the export of these model files: their sizes and modification times."""
        digest = hashlib.sha256(f"{EXPORT_VERSION}\0{self.model_path.resolve()}".encode())
        for name in _FINGERPRINTED:
            path = self.model_path / name
            if path.exists():
                stat = path.stat()
                digest.update(f"\0{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    # --- lazy loading ---------------------------------------------------------------
    def _get_model_tokenizer(self):
        """The tokenizer as the model sees text (truncated to its sequence limit, padded per batch),
        one per thread: a single query runs beside a batch (see :meth:`_embed`)."""
        tokenizer = getattr(self._model_tokenizers, "tokenizer", None)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=self.max_tokens)
            tokenizer.enable_padding()
            self._model_tokenizers.tokenizer = tokenizer
        return tokenizer

    def prepare(self) -> None:
        """Everything but the runtime's session, for a process about to fork (the Celery worker's
        main process): the export, the tokenizer, the imports. A session made before a fork is
        not the children's to use: its thread pool does not survive the fork (a child running it
        embedded at half the speed, bench ingest: 26 chunks/s against 55), and a child creating
        a session of its own after its parent had one hangs. Each child loads the export
        (about 0.3 s, ``worker_process_init``)."""
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401

        with self._lock.hold(urgent=True):
            self._ensure_export()
            self._get_tokenizer()
            self._get_model_tokenizer()

    def _get_model(self):
        if self._model is not None and self._pid != os.getpid() and not self._warned_fork:
            self._warned_fork = True  # still works, slower: see prepare()
            logger.warning("embedding.session_from_before_fork", path=str(self.onnx_path))
        if self._model is None:
            self._ensure_export()
            try:
                session = self._session()
            except Exception as exc:  # a damaged file (a disk that filled up, a copy cut short)
                logger.warning("embedding.export_unreadable", path=str(self.onnx_path), error=str(exc)[:500])
                export_onnx(self.model_path, self.onnx_path)  # once: a second failure is raised
                session = self._session()
            produced = session.get_outputs()[0].shape[-1]
            if produced != self.dimensions:
                raise ImproperlyConfigured(f"{self.onnx_path}: model produces {produced}-d vectors, "
                                           f"config says {self.dimensions}")
            self._inputs = [i.name for i in session.get_inputs()]
            self._get_model_tokenizer()
            self._model, self._pid = session, os.getpid()
        return self._model

    def _ensure_export(self) -> None:
        if not self.onnx_path.exists():
            export_onnx(self.model_path, self.onnx_path)

    def _session(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(self.threads or 0)
        options.inter_op_num_threads = 1
        # No busy-waiting after each call: on a small machine the spinning threads would take
        # the cores the event loop and PostgreSQL need between two queries.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    # --- API ------------------------------------------------------------------------
    def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        """A batch takes the model's lock (batches run one at a time, in slices the caller chose);
        a single query does not wait for it. An ONNX Runtime session takes concurrent calls, so a
        question runs on another core beside a batch in progress instead of behind its slice
        (``bench embeddings``, a query while another caller's batches run: p50 95 -> 22-24 ms,
        batch throughput unchanged)."""
        try:
            if self._model is None or self._pid != os.getpid():
                with self._lock.hold(urgent=True):
                    self._get_model()
            if kind == "query" and len(texts) == 1:
                return self._run(texts)
            with self._lock.hold():
                return self._run(texts)
        except ImproperlyConfigured:
            raise
        except Exception as exc:  # runtime / tokenizer / export failures surface as one error family
            raise EmbeddingError(f"local model failed: {exc}", backend=self.alias) from exc

    def _run(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        session, tokenizer = self._model, self._get_model_tokenizer()
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        # Longest first, as sentence-transformers batches: texts of like length pad little.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            encodings = tokenizer.encode_batch([texts[i] for i in batch])
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            columns = {"input_ids": [e.ids for e in encodings], "attention_mask": mask,
                       "token_type_ids": [e.type_ids for e in encodings]}
            hidden = session.run(None, {name: np.asarray(columns[name], dtype=np.int64) for name in self._inputs})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            vectors[batch] = pooled
        return vectors.tolist()


def _slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", model_id).strip("-") or "model"


def export_onnx(model_path: Path, target: Path) -> None:
    """Write the model directory's transformer (token embeddings out) as ONNX at ``target``.

    Imports torch, sentence-transformers and onnx (seconds, once per machine). The file is
    written beside ``target`` under a name of this process's own and renamed into place.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    transformer = model[0].auto_model.eval()
    sample = model[0].tokenizer(["quire exports its embedding model"], return_tensors="pt")
    names = [name for name in _INPUTS if name in sample]

    class _TokenEmbeddings(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "token_embeddings"]}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(_TokenEmbeddings(transformer), tuple(sample[name] for name in names), str(partial),
                              input_names=names, output_names=["token_embeddings"], dynamic_axes=axes,
                              dynamo=False)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("embedding.model_exported", model_path=str(model_path), path=str(target),
                bytes=target.stat().st_size)
