"""Spans Quire writes itself, for work no instrumentation understands: an LLM call, with its
model, tokens, cost and outcome (apps.llm.services).

A span is written after the fact, when the work is over, with the start and end it had and
under the trace context that was current when it started (:func:`parent`). Nothing is made
current in between, so a streamed call that yields to its consumer never attaches or
detaches a context across an ``await``.

Without traces (no OTLP endpoint) :data:`recorder` stays None: :func:`parent` returns None at
the cost of one attribute read, and nothing of OpenTelemetry is imported.
:func:`apps.core.tracing.setup` sets :data:`recorder` when it starts traces.
"""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    def current(self) -> object: ...

    def record(self, name: str, *, parent: object, start_ns: int, end_ns: int, attributes: dict,
               error: str | None = None) -> None: ...


recorder: Recorder | None = None


def parent() -> object | None:
    """The current trace context, to hang a span written later on; None when traces are off."""
    return None if recorder is None else recorder.current()


def record(name: str, *, parent: object, start_ns: int, end_ns: int, attributes: dict,
           error: str | None = None) -> None:
    """Write a finished span (kind INTERNAL) under ``parent`` (from :func:`parent`; nothing is
    written without one). ``error``: the span's status is ERROR with this description."""
    if recorder is not None and parent is not None:
        recorder.record(name, parent=parent, start_ns=start_ns, end_ns=end_ns, attributes=attributes, error=error)
