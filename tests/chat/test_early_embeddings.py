"""The per-process bound on query embeddings started before the caller is checked
(apps.chat.early): forged credentials cannot make a process embed at will."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from rest_framework.authtoken.models import Token

from apps.chat import services
from apps.chat.early import EARLY, EarlyEmbeddings
from tests.chat.sse_client import ask, first
from tests.factories.chat import ConversationFactory
from tests.factories.documents import UserFactory
from tests.factories.search import indexed_document


def _outcomes() -> dict[str, float]:
    return {outcome: REGISTRY.get_sample_value("quire_chat_early_embeddings_total", {"outcome": outcome}) or 0.0
            for outcome in ("read", "refused", "skipped_busy", "skipped_refusals", "off")}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(autouse=True)
def _fresh_bound():
    """The process's bound starts each test with nothing counted."""
    EARLY.in_flight.clear()
    EARLY.window, EARLY.refused = -1, 0
    yield
    EARLY.window, EARLY.refused = -1, 0


class Clock:
    def __init__(self):
        self.now = 60.0 * 20_000  # the start of a minute

    def __call__(self):
        return self.now


def test_at_most_max_run_at_once_and_refused_ones_are_cancelled(settings):
    settings.CHAT_EARLY_EMBEDDINGS_MAX = 2

    async def go():
        early, before = EarlyEmbeddings(Clock()), _outcomes()
        a, b = early.start("what causes tides?"), early.start("why is the sky blue?")
        assert a is not None and b is not None
        assert early.start("a third question") is None  # two in flight already
        early.settle(a, answered=False)  # refused while still embedding: cancelled
        await asyncio.sleep(0)
        assert a.cancelled() and early.in_flight == {b}
        c = early.start("a third question")
        assert c is not None  # a place came free
        vector = await b
        assert len(vector) == 384
        early.settle(b, answered=True)
        early.settle(b, answered=True)  # settled once only
        early.settle(c, answered=True)
        assert not b.cancelled() and early.in_flight == set()
        assert _delta(before, _outcomes()) == {"refused": 1, "skipped_busy": 1, "read": 2}

    asyncio.run(go())


def test_refused_questions_pause_early_embeddings_until_the_next_minute(settings):
    settings.CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE = 2

    async def go():
        clock = Clock()
        early, before = EarlyEmbeddings(clock), _outcomes()
        for question in ("forged one", "forged two"):
            early.settle(early.start(question), answered=False)
        assert early.start("an honest question") is None  # two spent on refusals this minute
        clock.now += 59.9
        assert early.start("an honest question") is None
        clock.now += 0.1  # the next minute
        task = early.start("an honest question")
        assert task is not None
        await task
        early.settle(task, answered=True)  # an answered question costs nothing from the budget
        assert early.refused == 0
        assert _delta(before, _outcomes()) == {"refused": 2, "skipped_refusals": 2, "read": 1}

    asyncio.run(go())


def test_zero_switches_early_embeddings_off(settings):
    settings.CHAT_EARLY_EMBEDDINGS_MAX = 0

    async def go():
        before = _outcomes()
        assert EarlyEmbeddings(Clock()).start("what causes tides?") is None
        assert _delta(before, _outcomes()) == {"off": 1}

    asyncio.run(go())


@pytest.mark.django_db
def test_a_flood_of_forged_tokens_stops_costing_embeddings(settings, llm, monkeypatch):
    """Each request with a forged ``Authorization`` header gets its question embedded while the
    token is checked, until the minute's budget of refused ones is spent; then none does, and an
    honest caller is still answered from the right passages (its question embedded after the
    check). The next minute, early embedding resumes."""
    settings.CHAT_EARLY_EMBEDDINGS_REFUSED_PER_MINUTE = 3
    clock = Clock()
    monkeypatch.setattr(EARLY, "clock", clock)
    started = []
    real = services.aembed_question_soon
    monkeypatch.setattr(services, "aembed_question_soon", lambda q: started.append(q) or real(q))
    tides = indexed_document(title="Tides", body="Tides are caused by the gravity of the Moon and the Sun.")
    llm.configure(text="The Moon [1].")
    reader = UserFactory()
    conversation = ConversationFactory(owner=reader)
    url = f"/api/v1/chat/conversations/{conversation.pk}/messages"
    forged = {"authorization": "Token forged-0123456789"}

    for i in range(5):
        response, _ = ask(url, f"forged question {i}?", headers=forged)
        assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"
    assert started == ["forged question 0?", "forged question 1?", "forged question 2?"]
    assert EARLY.in_flight == set()

    honest = {"authorization": f"Token {Token.objects.create(user=reader).key}"}
    response, events = ask(url, "What causes tides?", headers=honest)
    assert response.status_code == 200
    assert first(events, "meta")["sources"][0]["document_id"] == tides.pk
    assert len(started) == 3  # no early embedding: paused

    clock.now += 60
    response, events = ask(url, "What causes the tides?", headers=honest)
    assert response.status_code == 200 and first(events, "meta")["sources"][0]["document_id"] == tides.pk
    assert started[-1] == "What causes the tides?"

