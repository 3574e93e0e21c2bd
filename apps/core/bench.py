"""Benchmark registry behind ``manage.py bench <name>``.

Apps register benchmarks in a ``benchmarks`` module (autodiscovered)::

    @register("search", help="HNSW vs exact scan")
    def bench_search(*, stdout, options): ...  # returns a dict of figures

Every benchmark prints a readable table, then one JSON line (the last line of
output) holding its figures plus :func:`machine_info`.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Benchmark:
    name: str
    func: Callable
    help: str = ""
    arguments: Callable | None = None  # def (parser) -> None
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, Benchmark] = {}


def register(name: str, *, help: str = "", arguments: Callable | None = None):
    def decorator(func):
        REGISTRY[name] = Benchmark(name=name, func=func, help=help, arguments=arguments)
        return func

    return decorator


def machine_info() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), "
            "(SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        )
        pg_version, vector_version = cursor.fetchone()
    cpu_model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": pg_version,
        "pgvector": vector_version,
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; ``pct`` in 0..100."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples_s: list[float]) -> dict:
    ms = [s * 1000 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
        "n": len(ms),
    }


def print_table(stdout, rows: list[tuple], headers: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False))
    stdout.write(line)
    stdout.write("  ".join("-" * w for w in widths))
    for row in rows:
        stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)))
