"""Deterministic embedding backend for the test settings only (never a default).

Each text becomes a hashed bag of lower-cased, crudely stemmed words projected
into ``DIMENSIONS`` and L2-normalised, so texts that share words are close and
unrelated texts are nearly orthogonal. Tokens are words and punctuation marks
(a whitespace/punctuation split, like BERT's pre-tokenizer), so counts add up
across words exactly as the chunker assumes.

Calls can be observed and failures injected *across processes* (the test
process and a real worker), through the Django cache (Redis):

* every ``embed_documents``/``embed_query`` call increments ``calls`` and adds
  the number of texts to ``texts`` (:func:`recorded_calls`);
* while :func:`fail_embeddings` is on, every call raises ``EmbeddingUnavailable``;
* while :func:`hold_embeddings` is on, every call waits (up to 60 s) before
  embedding, so a test can act while a task is mid-embedding.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time

from redis.exceptions import RedisError

from apps.llm.embeddings.base import EmbeddingBackend
from apps.llm.embeddings.exceptions import EmbeddingUnavailable

TOKEN_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
WORD_RE = re.compile(r"\w+", re.UNICODE)
_SUFFIXES = ("ational", "ization", "fulness", "ousness", "iveness", "ations", "ation", "ments", "ment",
             "ings", "ing", "edly", "ies", "ied", "ers", "er", "ed", "ly", "es", "s")
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "of",
    "on", "or", "that", "the", "this", "to", "was", "were", "will", "with",
})

_CALLS_KEY = "embeddings:testing:{alias}:calls"
_TEXTS_KEY = "embeddings:testing:{alias}:texts"
_FAIL_KEY = "embeddings:testing:{alias}:fail"
_HOLD_KEY = "embeddings:testing:{alias}:hold"
HOLD_MAX_SECONDS = 60


def stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


class DeterministicBackend(EmbeddingBackend):
    """OPTIONS: ``DIMENSIONS`` (384), ``MAX_TOKENS`` (256), ``MODEL_ID``, ``RECORD_CALLS`` (True)."""

    option_names = frozenset({"DIMENSIONS", "MAX_TOKENS", "MODEL_ID", "RECORD_CALLS"})
    special_tokens = 2
    provider_name = "testing"

    def __init__(self, alias: str = "default", **options):
        super().__init__(alias, **options)
        self.dimensions = int(options.get("DIMENSIONS", 384))
        self.max_tokens = int(options.get("MAX_TOKENS", 256))
        self.model_id = options.get("MODEL_ID", "testing/hashed-bag-of-words")
        self.record_calls = bool(options.get("RECORD_CALLS", True))

    def _embed(self, texts: list[str], *, kind: str) -> list[list[float]]:
        if self.record_calls:
            # The tests' instrumentation lives in Redis; without it (an outage's test) just embed.
            with contextlib.suppress(RedisError, OSError):
                self._observe(len(texts))
        return [self.vector(t) for t in texts]

    def _observe(self, n_texts: int) -> None:
        _record(self.alias, n_texts)
        if _cache().get(_FAIL_KEY.format(alias=self.alias)):
            raise EmbeddingUnavailable("testing backend: failure injected", backend=self.alias)
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        while _cache().get(_HOLD_KEY.format(alias=self.alias)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dimensions
        words = [stem(w) for w in WORD_RE.findall(text.lower()) if w not in _STOPWORDS]
        for word in words or ["\x00empty"]:
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            for i in range(2):  # two buckets per word soften collisions
                idx = int.from_bytes(digest[i * 3: i * 3 + 3], "big") % self.dimensions
                vec[idx] += 1.0 if digest[6 + i] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec))
        if norm == 0.0:  # every bucket cancelled out: a zero vector has no cosine
            vec[0], norm = 1.0, 1.0
        return [v / norm for v in vec]

    def count_tokens_batch(self, texts: list[str]) -> list[int]:
        return [len(TOKEN_RE.findall(t)) for t in texts]


# --- cross-process observation for tests --------------------------------------------
def _cache():
    from django.core.cache import cache

    return cache


def _record(alias: str, n_texts: int) -> None:
    cache = _cache()
    for key, amount in ((_CALLS_KEY, 1), (_TEXTS_KEY, n_texts)):
        key = key.format(alias=alias)
        cache.add(key, 0, timeout=None)
        cache.incr(key, amount)


def recorded_calls(alias: str = "default") -> dict:
    """``{"calls": int, "texts": int}`` recorded so far by every process of this run."""
    cache = _cache()
    return {
        "calls": int(cache.get(_CALLS_KEY.format(alias=alias)) or 0),
        "texts": int(cache.get(_TEXTS_KEY.format(alias=alias)) or 0),
    }


def fail_embeddings(on: bool = True, alias: str = "default") -> None:
    """Make every call of the testing backend fail (in every process) until turned off."""
    if on:
        _cache().set(_FAIL_KEY.format(alias=alias), 1, timeout=None)
    else:
        _cache().delete(_FAIL_KEY.format(alias=alias))


def hold_embeddings(on: bool = True, alias: str = "default") -> None:
    """Make every call of the testing backend wait (in every process) until released."""
    if on:
        _cache().set(_HOLD_KEY.format(alias=alias), 1, timeout=HOLD_MAX_SECONDS)
    else:
        _cache().delete(_HOLD_KEY.format(alias=alias))
