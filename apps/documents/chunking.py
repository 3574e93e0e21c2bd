"""Markdown → chunks sized in the embedding model's own tokens.

Heading-aware (a chunk never spans two sections; its heading path is kept and
prefixed, with the document title, to the text that is embedded) and
paragraph-aware (paragraphs are packed whole; only a paragraph larger than the
budget is split, at sentence boundaries, and only a sentence larger than the
budget is split at word boundaries). Consecutive chunks of one section overlap
by up to ``overlap`` tokens of whole trailing sentences (or words).

Deterministic: the same (title, body, model) always gives the same chunks and
hashes. Sizes rely on token counts being additive across whitespace-separated
pieces, which holds for BERT-style tokenizers (they pre-split on whitespace and
punctuation); the final inputs are counted again and trimmed if ever needed, so
no input exceeds the model limit.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from apps.llm.embeddings import EmbeddingBackend

HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE_RE = re.compile(r"^\s*(```|~~~)")
SETEXT_RE = re.compile(r"^\s*(=+|-+)\s*$")
SENTENCE_RE = re.compile(r"(?<=[.!?:;])\s+(?=\S)")
HEADING_SEPARATOR = " › "
# The title + heading prefix may use at most this share of the model limit.
PREFIX_SHARE = 0.25
MIN_TEXT_BUDGET = 32


@dataclass(frozen=True)
class ChunkDraft:
    ordinal: int
    text: str            # chunk text as stored and shown (no prefix)
    heading_path: str
    embed_input: str     # title/heading prefix + text: what the model embeds
    token_count: int     # model tokens of embed_input, special tokens included
    content_hash: str    # sha256 of (model id, embed_input): vectors are reused by it


@dataclass
class _Piece:
    text: str
    tokens: int
    paragraph: int  # pieces of one paragraph are joined by a space, paragraphs by a blank line


def document_content_hash(*, title: str, body: str, model_id: str) -> str:
    """What the stored chunks were built from: unchanged hash → nothing to embed."""
    return _sha256(model_id, title.strip(), body)


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def split_sections(body: str) -> list[tuple[list[str], list[str]]]:
    """Markdown → [(heading stack, [paragraph, ...]), ...]; fenced code stays whole."""
    sections: list[tuple[list[str], list[str]]] = []
    headings: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    current: list[str] = []
    in_fence = False

    def end_paragraph():
        text = "\n".join(current).strip()
        if text:
            paragraphs.append(text)
        current.clear()

    def end_section():
        end_paragraph()
        if paragraphs:
            sections.append(([h for _, h in headings], list(paragraphs)))
        paragraphs.clear()

    def open_heading(level: int, text: str):
        end_section()
        while headings and headings[-1][0] >= level:
            headings.pop()
        if text:
            headings.append((level, text))

    for line in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if FENCE_RE.match(line):
            in_fence = not in_fence
            current.append(line)
            continue
        if in_fence:
            current.append(line)
            continue
        match = HEADING_RE.match(line)
        if match:
            open_heading(len(match.group(1)), match.group(2).strip())
            continue
        if SETEXT_RE.match(line) and len(current) == 1 and current[0].strip():
            text = current.pop().strip()
            open_heading(1 if line.strip().startswith("=") else 2, text)
            continue
        if not line.strip():
            end_paragraph()
            continue
        current.append(line)
    end_section()
    return sections


def _split_words(text: str, budget: int, backend: EmbeddingBackend) -> list[tuple[str, int]]:
    """A too-long sentence → word windows of at most ``budget`` tokens."""
    words = text.split()
    counts = backend.count_tokens_batch(words)
    pieces: list[tuple[str, int]] = []
    window: list[str] = []
    window_tokens = 0
    for word, count in zip(words, counts, strict=True):
        if count > budget:  # a monstrous "word" (a URL, base64): cut by characters, ≤ 1 token each
            if window:
                pieces.append((" ".join(window), window_tokens))
                window, window_tokens = [], 0
            for start in range(0, len(word), budget):
                part = word[start: start + budget]
                pieces.append((part, backend.count_tokens(part)))
            continue
        if window and window_tokens + count > budget:
            pieces.append((" ".join(window), window_tokens))
            window, window_tokens = [], 0
        window.append(word)
        window_tokens += count
    if window:
        pieces.append((" ".join(window), window_tokens))
    return pieces


def _pieces(paragraphs: list[str], budget: int, backend: EmbeddingBackend) -> list[_Piece]:
    counts = backend.count_tokens_batch(paragraphs)
    pieces: list[_Piece] = []
    for index, (paragraph, count) in enumerate(zip(paragraphs, counts, strict=True)):
        if count <= budget:
            pieces.append(_Piece(paragraph, count, index))
            continue
        sentences = [s for s in SENTENCE_RE.split(paragraph) if s.strip()]
        for sentence, s_count in zip(sentences, backend.count_tokens_batch(sentences), strict=True):
            if s_count <= budget:
                pieces.append(_Piece(sentence, s_count, index))
            else:
                pieces.extend(_Piece(t, c, index) for t, c in _split_words(sentence, budget, backend))
    return pieces


def _join(pieces: list[_Piece]) -> str:
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if i:
            out.append(" " if piece.paragraph == pieces[i - 1].paragraph else "\n\n")
        out.append(piece.text)
    return "".join(out)


def _overlap_tail(pieces: list[_Piece], overlap: int, backend: EmbeddingBackend) -> list[_Piece]:
    """Trailing whole pieces worth ≤ ``overlap`` tokens, else the last piece's trailing words."""
    if overlap <= 0 or not pieces:
        return []
    tail: list[_Piece] = []
    total = 0
    for piece in reversed(pieces):
        if total + piece.tokens > overlap:
            break
        tail.insert(0, piece)
        total += piece.tokens
    if tail:
        return tail
    last = pieces[-1]
    words = last.text.split()
    counts = backend.count_tokens_batch(words)
    kept: list[str] = []
    for word, count in zip(reversed(words), reversed(counts), strict=True):
        if total + count > overlap:
            break
        kept.insert(0, word)
        total += count
    return [_Piece(" ".join(kept), total, last.paragraph)] if kept else []


def _pack(pieces: list[_Piece], budget: int, overlap: int, backend: EmbeddingBackend) -> list[list[_Piece]]:
    chunks: list[list[_Piece]] = []
    current: list[_Piece] = []
    current_tokens = 0
    fresh = 0  # pieces in ``current`` that are not overlap from the previous chunk
    for piece in pieces:
        if fresh and current_tokens + piece.tokens > budget:
            chunks.append(current)
            current = _overlap_tail(current, overlap, backend)
            current_tokens = sum(p.tokens for p in current)
            fresh = 0
        if current_tokens + piece.tokens > budget:  # overlap would push it over: drop the overlap
            current, current_tokens = [], 0
        current.append(piece)
        current_tokens += piece.tokens
        fresh += 1
    if fresh:
        chunks.append(current)
    return chunks


def _prefix(title: str, headings: list[str], limit: int, backend: EmbeddingBackend) -> str:
    label = HEADING_SEPARATOR.join([title.strip(), *headings]) if title.strip() else HEADING_SEPARATOR.join(headings)
    if not label:
        return ""
    if backend.count_tokens(label) > limit:
        words = label.split()
        counts = backend.count_tokens_batch(words)
        kept, total = [], 0
        for word, count in zip(words, counts, strict=True):
            if total + count > limit - 1:
                break
            kept.append(word)
            total += count
        label = " ".join(kept) + " …"
    return label + "\n\n"


def _trim_to_limit(prefix: str, text: str, limit: int, backend: EmbeddingBackend) -> tuple[str, int]:
    """Drop trailing words (then characters) until prefix + text fits ``limit`` tokens."""
    words = text.split(" ")
    while len(words) > 1:
        words = words[:-1]
        count = backend.count_tokens(prefix + " ".join(words))
        if count <= limit:
            return " ".join(words), count
    text = words[0]
    while text and backend.count_tokens(prefix + text) > limit:
        text = text[: len(text) * 3 // 4]
    return text, backend.count_tokens(prefix + text)


def chunk_document(
    *, title: str, body: str, backend: EmbeddingBackend, target_tokens: int = 200, overlap_tokens: int = 30
) -> list[ChunkDraft]:
    """Split a document into :class:`ChunkDraft` objects (empty body → no chunks)."""
    if not body.strip():
        return []
    hard_limit = backend.max_input_tokens
    target = min(target_tokens, hard_limit)
    prefix_limit = max(8, int(backend.max_tokens * PREFIX_SHARE))
    drafts: list[tuple[str, str, str]] = []  # (prefix, text, heading_path)
    for headings, paragraphs in split_sections(body):
        prefix = _prefix(title, headings, prefix_limit, backend)
        prefix_tokens = backend.count_tokens(prefix) if prefix else 0
        budget = max(MIN_TEXT_BUDGET, target - prefix_tokens)
        budget = min(budget, hard_limit - prefix_tokens)
        overlap = min(overlap_tokens, budget // 2)
        for group in _pack(_pieces(paragraphs, budget, backend), budget, overlap, backend):
            drafts.append((prefix, _join(group), HEADING_SEPARATOR.join(headings)[:500]))

    counts = backend.count_tokens_batch([prefix + text for prefix, text, _ in drafts])
    result: list[ChunkDraft] = []
    for ordinal, ((prefix, text, heading_path), count) in enumerate(zip(drafts, counts, strict=True)):
        if count > hard_limit:  # safety net, should a tokenizer not be additive somewhere
            text, count = _trim_to_limit(prefix, text, hard_limit, backend)
        embed_input = prefix + text
        result.append(ChunkDraft(
            ordinal=ordinal, text=text, heading_path=heading_path, embed_input=embed_input,
            token_count=count + backend.special_tokens,
            content_hash=_sha256(backend.model_id, embed_input),
        ))
    return result
