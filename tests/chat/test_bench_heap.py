"""bench sse --tracemalloc: the heap one more held stream costs, by allocation site."""

import tracemalloc

from apps.chat.heap import growth_per_stream


def _hold(streams: int) -> list:
    return [bytearray(2000) for _ in range(streams)]  # ~2 KB "per stream", allocated on this line


def test_growth_per_stream_finds_what_each_stream_holds_and_where():
    tracemalloc.start(1)
    try:
        first = _hold(100)
        before = tracemalloc.take_snapshot()
        second = _hold(300)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    total, sites = growth_per_stream(before, after, streams=300, top=5)
    assert 1.9 <= total <= 2.3  # KB per stream: 2000-byte bodies plus object headers
    assert sites[0].where == "tests/chat/test_bench_heap.py:9"
    assert 1.9 <= sites[0].kb_per_stream <= 2.1
    assert sites[0].objects_per_stream == 2.0  # a bytearray and its buffer
    assert len(first) + len(second) == 400
