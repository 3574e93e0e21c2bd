"""Parsing of what a reader types into the search box.

Bare words are OR-ed and ranked with BM25 (``websearch_to_tsquery`` would AND
them, and most natural-language questions would then match nothing). Quoted
phrases must match as phrases and ``-word`` / ``-"a phrase"`` exclude, as in
``websearch_to_tsquery``. Nothing here is ever spliced into SQL or tsquery
syntax: the pieces are passed as parameters to ``to_tsvector`` /
``phraseto_tsquery`` / ``websearch_to_tsquery``, which accept any text, so no
input can produce a syntax error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from django.conf import settings

# A token is an optionally negated quoted phrase (closing quote optional) or a
# run of non-space, non-quote characters.
_TOKEN = re.compile(r'(?P<neg>-?)"(?P<phrase>[^"]*)"?|(?P<word>[^\s"]+)')
_WORD = re.compile(r"\w+", re.UNICODE)
# Control characters (NUL in particular cannot be sent to PostgreSQL).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_OPERATOR_WORDS = {"or", "and", "not"}


@dataclass(frozen=True)
class ParsedQuery:
    raw: str
    words: list[str] = field(default_factory=list)  # positive words (bare + inside phrases)
    phrases: list[str] = field(default_factory=list)  # must match as phrases
    excluded: list[str] = field(default_factory=list)  # words or phrases that must not match

    @property
    def is_empty(self) -> bool:
        return not self.words

    @property
    def text(self) -> str:
        """Positive text without operators: what the keyword side analyses and the model embeds."""
        return " ".join(self.words)

    @property
    def headline_query(self) -> str:
        """A websearch query OR-ing every positive word (for ts_headline highlighting)."""
        return " or ".join(w for w in self.words if w.lower() not in _OPERATOR_WORDS)


def clean_text(value: str | None) -> str:
    """``value`` without control characters (PostgreSQL rejects NUL in text)."""
    return _CONTROL.sub(" ", value or "")


def parse_query(raw: str | None) -> ParsedQuery:
    text = clean_text(raw)[: settings.SEARCH_MAX_QUERY_CHARS].strip()
    words: list[str] = []
    phrases: list[str] = []
    excluded: list[str] = []
    for match in _TOKEN.finditer(text):
        if match.group("phrase") is not None:
            phrase_words = _WORD.findall(match.group("phrase"))
            if not phrase_words:
                continue
            phrase = " ".join(phrase_words)
            if match.group("neg"):
                excluded.append(phrase)
            else:
                phrases.append(phrase)
                words.extend(phrase_words)
            continue
        token = match.group("word")
        if token.startswith("-") and len(token) > 1:
            excluded.extend(_WORD.findall(token[1:]))
            continue
        words.extend(w for w in _WORD.findall(token) if w.lower() not in _OPERATOR_WORDS)
    return ParsedQuery(raw=text, words=words, phrases=phrases, excluded=excluded)
