"""Text that arrives piece by piece (an answer streamed token by token), kept compact."""

from __future__ import annotations


class TextBuffer:
    """The pieces appended so far, as one text.

    A list of tokens costs about 60 bytes per token (a ``str`` object and its slot) for
    text of about 4: an answer of 1,000 tokens held while it streams was ~60 KB per
    open stream, more than everything else the stream holds. Here every ``BLOCK`` pieces
    are joined into one string, so a held answer costs about its characters; no piece is
    copied more than twice, however long the answer.
    """

    BLOCK = 32
    __slots__ = ("_blocks", "_tail")

    def __init__(self, text: str = ""):
        self._blocks: list[str] = [text] if text else []
        self._tail: list[str] = []

    def append(self, piece: str) -> None:
        self._tail.append(piece)
        if len(self._tail) >= self.BLOCK:
            self._blocks.append("".join(self._tail))
            self._tail.clear()

    def text(self) -> str:
        return "".join(self._blocks) + "".join(self._tail)

    def __bool__(self) -> bool:
        return any(self._blocks) or any(self._tail)
