"""What a process does without Redis: goes on, counts it, and says so once a minute.

Redis holds what makes Quire fast and fair, not what it answers from: rate-limit counters,
the LLM proxy's cache, breaker and budget state, the ledger's queue, shared query vectors,
the Celery broker. Each place that talks to it catches the outage and carries on in a
documented degraded way (rate limits and budgets admit, the cache misses, ledger rows go
straight to the database, a task that cannot be queued is picked up by the sweep). Each
calls :func:`redis_unavailable`, which

- counts every occurrence in ``quire_redis_unavailable_total{component}`` (alert on its rate);
- logs ``<component>.redis_unavailable`` at most once per ``_WARN_EVERY_S`` per component and
  process, with how many were not logged since (``suppressed``): an outage at a thousand
  requests a second is a few lines a minute, not thousands a second.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import Counter

from apps.core.logging import get_logger

logger = get_logger("quire.degraded")

REDIS_UNAVAILABLE = Counter("quire_redis_unavailable_total",
                            "Redis calls that failed and were carried on without (by component)", ["component"])

_WARN_EVERY_S = 60.0
_lock = threading.Lock()
_last: dict[str, float] = {}  # component: when its warning was last logged (monotonic)
_suppressed: dict[str, int] = {}


def redis_unavailable(component: str, exc: BaseException, **fields) -> None:
    """Record that ``component`` went on without Redis after ``exc`` (see the module's doc)."""
    REDIS_UNAVAILABLE.labels(component).inc()
    now = time.monotonic()
    with _lock:
        if now - _last.get(component, float("-inf")) < _WARN_EVERY_S:
            _suppressed[component] = _suppressed.get(component, 0) + 1
            return
        _last[component] = now
        suppressed = _suppressed.pop(component, 0)
    logger.warning(f"{component}.redis_unavailable", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                   suppressed=suppressed, **fields)


def reset() -> None:
    """Forget when each warning was logged (tests)."""
    with _lock:
        _last.clear()
        _suppressed.clear()
