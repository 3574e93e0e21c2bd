"""The backend that needs no model: the last resort of every route.

It answers with the most relevant retrieved passages (given by the caller as
``passages``: dicts with ``n``, ``title``, ``text`` and ``url`` or
``document_id``), quoted and cited as ``[n]``, under a label saying that no
language model is configured. It never fails, so a user never gets a hard error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from apps.llm.backends.base import BackendCall, ChatBackend, Completion, Delta

LABEL = "No language model is configured, so here are the most relevant passages, quoted from the sources."
NOTHING_FOUND = "No language model is configured, and no passage relevant to your question was found."
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(
    """a an and are as at be by do does for from how i in is it its of on or that the this to was what when where
    which who why with you your can me my we our""".split()  # noqa: SIM905
)


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1}


def _question(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


def extractive_answer(question: str, passages: list[dict], *, max_passages: int = 3, max_sentences: int = 2) -> str:
    """The quoted, cited answer text (pure function, also used by tests)."""
    wanted = _terms(question)
    scored = []
    for index, passage in enumerate(passages):
        text = (passage.get("text") or "").strip()
        if not text:
            continue
        sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
        ranked = sorted(sentences, key=lambda s: -len(wanted & _terms(s)))
        best = sorted(ranked[:max_sentences], key=sentences.index)  # keep reading order
        score = len(wanted & _terms(text))
        scored.append((score, -index, passage, best))
    if not scored:
        return NOTHING_FOUND
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    chosen = [item for item in scored[:max_passages] if item[0] > 0] or scored[:1]
    parts = [LABEL, ""]
    for _, _, passage, best in chosen:
        n = passage.get("n", "?")
        title = passage.get("title") or "Untitled"
        parts.append(f"> {' '.join(best)} [{n}]")
        parts.append(f"— {title}")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


class ExtractiveBackend(ChatBackend):
    """OPTIONS: ``max_passages`` (3), ``max_sentences`` per passage (2)."""

    OPTIONS = {"max_passages": 3, "max_sentences": 2}
    model_backed = False
    gen_ai_provider = "quire.extractive"

    @property
    def default_model(self) -> str:
        return "extractive"

    def answer(self, call: BackendCall) -> str:
        return extractive_answer(_question(call.messages), call.passages or [],
                                 max_passages=self.options["max_passages"],
                                 max_sentences=self.options["max_sentences"])

    async def stream(self, call: BackendCall) -> AsyncIterator[Delta]:
        # Word-sized deltas so the chat UI renders it like any streamed answer.
        for piece in re.findall(r"\S+\s*|\s+", self.answer(call)):
            yield Delta(piece)

    async def complete(self, call: BackendCall) -> Completion:
        return Completion(text=self.answer(call), finish_reason="stop")
