"""What one more held stream costs in Python heap, and where: ``bench sse --tracemalloc N``.

The worker runs :mod:`apps.chat.heap_asgi`; the bench asks it for a snapshot when half the
streams are open and again while all are held. The growth between the two, divided by the
streams opened in between, is the heap one more stream holds, by the line that allocated it
(the most recent of the ``N`` frames kept). RSS figures add the allocator's own overhead and
move by several KB from run to run; these do not.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

ASGI_APP = "apps.chat.heap_asgi:application"
BASE_DIR = Path(__file__).resolve().parent.parent.parent
STDLIB = os.path.dirname(os.__file__)


@dataclass(frozen=True)
class Site:
    where: str  # file:line, shortened
    kb_per_stream: float
    objects_per_stream: float


def growth_per_stream(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, streams: int,
                      top: int = 15) -> tuple[float, list[Site]]:
    """Total KB per stream between ``before`` and ``after`` (``streams`` opened in between), and
    the ``top`` allocation sites by growth. tracemalloc's own allocations are left out."""
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(own), after.filter_traces(own)
    differences = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in differences) / streams / 1024
    sites = [Site(_short(d.traceback[0]), round(d.size_diff / streams / 1024, 2), round(d.count_diff / streams, 1))
             for d in differences[:top]]
    return round(total, 1), sites


def _short(frame: tracemalloc.Frame) -> str:
    """``apps/chat/streaming.py:120``, ``aiohttp/streams.py:334``, ``asyncio/tasks.py:680``."""
    path = frame.filename
    if path.startswith(str(BASE_DIR) + os.sep) and "site-packages" not in path:
        path = os.path.relpath(path, BASE_DIR)
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(STDLIB + os.sep):
        path = os.path.relpath(path, STDLIB)
    return f"{path}:{frame.lineno}"


class HeapProbe:
    """The bench's side: the worker's environment, and snapshots on demand."""

    def __init__(self, frames: int):
        self.frames = frames
        self.directory = Path(tempfile.mkdtemp(prefix="bench-sse-heap-"))
        self.taken = 0

    def env(self) -> dict[str, str]:
        return {"QUIRE_BENCH_TRACEMALLOC": str(self.frames), "QUIRE_BENCH_SNAPSHOT_DIR": str(self.directory)}

    def take(self, pid: int, timeout: float = 600) -> None:
        """Ask the worker for a snapshot and wait until it is written (the worker is busy meanwhile)."""
        self.taken += 1
        done = self.directory / f"{self.taken}.done"
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker wrote no heap snapshot within {timeout} s")
            time.sleep(0.2)

    def growth(self, streams: int) -> tuple[float, list[Site]]:
        """Between the first and the last snapshot."""
        first = tracemalloc.Snapshot.load(str(self.directory / "1.snap"))
        last = tracemalloc.Snapshot.load(str(self.directory / f"{self.taken}.snap"))
        return growth_per_stream(first, last, streams)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
