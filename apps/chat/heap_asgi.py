"""The site's ASGI application with ``tracemalloc`` on, for ``bench sse --tracemalloc N`` only.

uvicorn imports this module instead of ``config.asgi``: tracing starts before anything of the
site is imported (``N`` frames per allocation, ``QUIRE_BENCH_TRACEMALLOC``), and each
``SIGUSR1`` writes a snapshot into ``QUIRE_BENCH_SNAPSHOT_DIR`` (``1.snap``, ``2.snap``, ...)
followed by an empty ``<n>.done`` marker. The worker runs several times slower like this:
its figures are about what it holds, never about its speed. See :mod:`apps.chat.heap`.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path

tracemalloc.start(int(os.environ["QUIRE_BENCH_TRACEMALLOC"]))

from config.asgi import application  # noqa: E402

__all__ = ["application"]

_snapshots = Path(os.environ["QUIRE_BENCH_SNAPSHOT_DIR"])
_taken = 0


def _snapshot(signum, frame) -> None:
    global _taken
    _taken += 1
    tracemalloc.take_snapshot().dump(str(_snapshots / f"{_taken}.snap"))
    (_snapshots / f"{_taken}.done").touch()


signal.signal(signal.SIGUSR1, _snapshot)
