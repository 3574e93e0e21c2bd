"""Helpers for documents tests: waiting on the real worker, draining its queue,
and resetting the testing backend's cross-process switches."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from apps.llm.embeddings.testing import fail_embeddings, hold_embeddings, recorded_calls


def wait_for(predicate, *, timeout: float = 60.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``predicate`` until truthy (the worker is a separate process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


def drain_queue(timeout: float = 60.0) -> None:
    """Round-trip a ping through the (single, concurrency-1) session worker: every
    task enqueued before it has finished once the ping comes back."""
    from config.celery_app import app

    app.send_task("core.ping", args=["drain"], queue=settings.CELERY_TASK_DEFAULT_QUEUE).get(timeout=timeout)


def with_result(task, *args):
    """Send ``task`` asking for its result: the pipeline's tasks store none by default."""
    return task.apply_async(args=args, ignore_result=False)


class CallCounter:
    """Embedding backend calls made by every process of this run since creation."""

    def __init__(self, alias: str = "default"):
        self.alias = alias
        self.start = recorded_calls(alias)

    @property
    def calls(self) -> int:
        return recorded_calls(self.alias)["calls"] - self.start["calls"]

    @property
    def texts(self) -> int:
        return recorded_calls(self.alias)["texts"] - self.start["texts"]


@pytest.fixture
def backend_switches():
    """Fail/hold switches of the testing backend, always turned off afterwards."""
    yield type("Switches", (), {"fail": staticmethod(fail_embeddings), "hold": staticmethod(hold_embeddings)})
    fail_embeddings(False)
    hold_embeddings(False)
