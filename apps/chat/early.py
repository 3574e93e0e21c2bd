"""How many question embeddings a process starts before their caller is checked.

Chat starts a question's query embedding as soon as the request arrives, while the session
and user are read and the limits checked (:func:`apps.chat.web.embed_early`): 0.5–1 ms less to
the first token. The price is that a request bringing any credential (a session cookie, an
``Authorization`` header), forged or not, costs an embedding before it is refused: about 10 ms
of CPU with the local model, a paid request with a provider's. :class:`EarlyEmbeddings` bounds
that, per process:

- at most ``CHAT_EARLY_EMBEDDINGS_MAX`` are in flight at once (each holds its task and, once
  done, a 3 KB vector until its question is accepted or refused); 0 turns early embedding off;
- once ``CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE`` early embeddings were spent on refused
  questions within a minute (a flood of forged credentials, callers over their limits), none
  is started until the next minute.

A question that gets no early embedding loses nothing but the overlap: its query is embedded
after its caller was checked, as a caller without credentials always is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from django.conf import settings
from prometheus_client import Counter

from apps.chat import services
from apps.core.logging import get_logger

logger = get_logger("quire.chat")

EARLY_EMBEDDINGS = Counter(
    "quire_chat_early_embeddings_total",
    "Question embeddings considered before the caller was checked, by outcome: read (the question was "
    "answered), refused (spent on a refused question), skipped_busy / skipped_refusals (not started: "
    "too many in flight / too many refused this minute), off (CHAT_EARLY_EMBEDDINGS_MAX=0)",
    ["outcome"],
)
WINDOW_S = 60.0


class EarlyEmbeddings:
    """The per-process bound on early embeddings (one instance, :data:`EARLY`, per process;
    used on the event loop's thread only)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.in_flight: set[asyncio.Task] = set()
        self.window = -1
        self.refused = 0

    def start(self, question: str) -> asyncio.Task | None:
        """The question's embedding, started now as a task on the running loop, or None if the
        bound says not now (or the question would be refused anyway). Hand the task back to
        :meth:`settle` once the question was answered or refused."""
        limit = settings.CHAT_EARLY_EMBEDDINGS_MAX
        if limit <= 0:
            EARLY_EMBEDDINGS.labels("off").inc()
            return None
        if len(self.in_flight) >= limit:
            EARLY_EMBEDDINGS.labels("skipped_busy").inc()
            return None
        if self._refused_now() >= settings.CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE:
            EARLY_EMBEDDINGS.labels("skipped_refusals").inc()
            return None
        task = services.aembed_question_soon(question)
        if task is not None:
            self.in_flight.add(task)
        return task

    def settle(self, task: asyncio.Task | None, *, answered: bool) -> None:
        """The end of ``task``'s question: cancel the embedding if it is still running (a refused
        question's), and count it against the minute's budget unless the question was answered."""
        if task is None or task not in self.in_flight:
            return
        self.in_flight.discard(task)
        if not task.done():
            task.cancel()
        if answered:
            EARLY_EMBEDDINGS.labels("read").inc()
            return
        EARLY_EMBEDDINGS.labels("refused").inc()
        self._refused_now()  # a new minute starts its own count
        self.refused += 1
        if self.refused == settings.CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE:
            logger.warning("chat.early_embeddings_paused", refused=self.refused,
                           resume_in_s=round(WINDOW_S - self.clock() % WINDOW_S, 1))

    def _refused_now(self) -> int:
        window = int(self.clock() // WINDOW_S)
        if window != self.window:
            self.window, self.refused = window, 0
        return self.refused


EARLY = EarlyEmbeddings()
