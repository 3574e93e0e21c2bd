"""Reading JSON request bodies so that every malformed body is the client's error.

``json.loads`` raises ``ValueError`` for most bad input, but ``RecursionError`` for
arrays or objects nested deeper than the interpreter's recursion limit (a 10 KB body
of ``[[[[...`` is enough); left alone, that became a 500.
"""

from __future__ import annotations

import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError


def loads(data: str | bytes):
    """``json.loads``, raising ``ValueError`` for every malformed document (too deep included)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in ``text`` (JSON's ``"\\ud800"``, half of a pair), or None.

    JSON may carry one, Python keeps it, but it is not Unicode text: no UTF-8 encoder,
    tokenizer, upstream or PostgreSQL takes it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with a body nested too deeply as a ``parse_error`` (400) too."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
