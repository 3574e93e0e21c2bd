"""Resources that belong to one event loop (an HTTP client, a Redis or database pool).

They are kept per (process, loop): a uvicorn worker has one loop and therefore one pool
of each for its whole life. Code that runs a short-lived loop (``async_to_sync``) closes
that loop's resources with :func:`aclose_loop_resources`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_per_loop: dict[asyncio.AbstractEventLoop, dict[str, Any]] = {}
_lock = threading.Lock()


def loop_local(name: str, factory: Callable[[], T]) -> T:
    """The ``name`` resource of the running loop, created by ``factory`` on first use."""
    loop = asyncio.get_running_loop()
    resources = _per_loop.get(loop)
    if resources is None:
        with _lock:
            for stale in [lp for lp in _per_loop if lp.is_closed()]:
                _per_loop.pop(stale, None)
            resources = _per_loop.setdefault(loop, {})
    value = resources.get(name)
    if value is None:
        value = resources[name] = factory()
    return value


def keep_resources() -> None:
    """Say that the running loop may keep resources with background tasks of their own (a
    database pool): it lives as long as the process (an ASGI server's, see config/asgi.py),
    or its owner closes them with :func:`aclose_loop_resources` before it ends. A loop nobody
    marked (``async_to_sync`` under WSGI, in a command) gets none: a pool's tasks would keep
    it from ever finishing its shutdown."""
    loop_local("keeps-resources", lambda: True)


def keeps_resources() -> bool:
    """Whether :func:`keep_resources` was said of the running loop."""
    return bool(_per_loop.get(asyncio.get_running_loop(), {}).get("keeps-resources"))


def serving(application):
    """An ASGI ``application`` whose server's loop keeps resources (:func:`keep_resources`)."""

    async def served(scope, receive, send):
        keep_resources()
        return await application(scope, receive, send)

    return served


def forget_loop_local(name: str) -> None:
    """Drop the running loop's ``name`` resource (it is closed: the next use makes a new one)."""
    _per_loop.get(asyncio.get_running_loop(), {}).pop(name, None)


async def aclose_loop_resources() -> None:
    """Close this loop's resources (for code that runs a short-lived loop)."""
    resources = _per_loop.pop(asyncio.get_running_loop(), {})
    for value in resources.values():
        if isinstance(value, asyncio.Task):
            value.cancel()
            continue
        close = getattr(value, "aclose", None) or getattr(value, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result
