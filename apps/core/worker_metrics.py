"""Prometheus metrics of Celery workers.

Tasks run in prefork children, so their counters live in other processes than
the one that could serve them. With ``CELERY_METRICS_PORT`` set, a worker uses
prometheus_client's multiprocess mode: every process writes its samples into a
private directory and the worker's main process serves the merged view on
``http://<host>:<port>/metrics``. Nothing here imports Django.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> str:
    """Point prometheus_client at a fresh directory. Must run before it is imported."""
    path = tempfile.mkdtemp(prefix="quire-worker-metrics-")
    os.environ[_ENV] = path
    return path


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped by Prometheus
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=addr, registry=registry)


def child_exited(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def cleanup() -> None:
    path = os.environ.get(_ENV)
    if path and os.path.basename(path).startswith("quire-worker-metrics-"):
        shutil.rmtree(path, ignore_errors=True)
