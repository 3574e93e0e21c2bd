"""TextBuffer: an answer streamed token by token, kept as about its characters."""

import tracemalloc

from apps.core.text import TextBuffer


def test_the_text_is_every_piece_in_order():
    pieces = [f"t{i} " for i in range(TextBuffer.BLOCK * 3 + 5)]
    buffer = TextBuffer()
    assert not buffer and buffer.text() == ""
    for piece in pieces:
        buffer.append(piece)
    assert buffer and buffer.text() == "".join(pieces)
    started = TextBuffer("cached answer")
    started.append("!")
    assert started.text() == "cached answer!"
    assert not TextBuffer("") and TextBuffer().text() == ""


def _held_bytes(make) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = make()
        size = tracemalloc.get_traced_memory()[0] - before
        del held
        return size
    finally:
        tracemalloc.stop()


def test_a_long_answer_holds_a_fraction_of_a_list_of_its_tokens():
    tokens = 1000

    def as_list():
        kept = []
        for i in range(tokens):
            kept.append(f"w{i % 10} ")  # a new ~4-character str per token, as a decoded stream chunk gives
        return kept

    def as_buffer():
        kept = TextBuffer()
        for i in range(tokens):
            kept.append(f"w{i % 10} ")
        return kept

    listed, buffered = _held_bytes(as_list), _held_bytes(as_buffer)
    assert listed > 50 * tokens  # ~60 bytes per token
    assert buffered < listed / 5, (listed, buffered)
