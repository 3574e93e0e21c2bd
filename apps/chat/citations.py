"""``[n]`` citations in an answer, kept only when they point at a passage the
model was actually shown."""

from __future__ import annotations

import re
from collections.abc import Iterable

# [1]   [1, 3]   [1,3]   and [1][2] (two marks side by side)
CITATION_MARK = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def cited_numbers(text: str) -> list[int]:
    """Every ``n`` cited in ``text``, in order of first appearance, without repeats."""
    seen: dict[int, None] = {}
    for match in CITATION_MARK.finditer(text):
        for part in match.group(1).split(","):
            seen.setdefault(int(part), None)
    return list(seen)


def resolve_citations(text: str, sources: Iterable[dict]) -> list[dict]:
    """The sources (dicts with ``n``) that ``text`` cites; numbers no source has are dropped."""
    by_number = {source["n"]: source for source in sources}
    return [dict(by_number[n]) for n in cited_numbers(text) if n in by_number]
