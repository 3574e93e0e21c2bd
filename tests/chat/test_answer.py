"""Answers through the real proxy and the fake upstream, in-process through
Django's async request path: what is saved, what is streamed, what is dropped."""

from decimal import Decimal

import pytest

from apps.chat.models import Message
from tests.chat.sse_client import ask, first
from tests.factories.chat import ConversationFactory
from tests.factories.documents import UserFactory
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader():
    return UserFactory()


@pytest.fixture
def tides():
    return indexed_document(title="Tides", body="Tides are caused by the gravity of the Moon and the Sun.")


def test_answer_streams_and_is_saved_with_tokens_and_cost(llm, reader, tides):
    llm.configure(text="The Moon pulls the oceans [1].")
    conversation = ConversationFactory(owner=reader)
    response, events = ask(f"/chat/{conversation.pk}/messages", "What causes tides?", user=reader)

    assert response["Content-Type"].startswith("text/event-stream")
    assert response["Cache-Control"] == "no-cache"
    assert response["X-Accel-Buffering"] == "no"
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "meta" and kinds[-2:] == ["citations", "done"]
    assert "".join(data["text"] for kind, data in events if kind == "token") == "The Moon pulls the oceans [1]."
    meta = first(events, "meta")
    assert meta["sources"][0]["document_id"] == tides.pk
    done = first(events, "done")
    assert done["usage"]["completion_tokens"] == 6 and Decimal(done["cost"]) > 0

    answer = Message.objects.get(pk=meta["message_id"])
    assert answer.status == Message.Status.COMPLETE
    assert answer.content == "The Moon pulls the oceans [1]."
    assert answer.completion_tokens == 6 and answer.prompt_tokens > 0
    assert answer.cost == Decimal(done["cost"]) > 0
    assert answer.provider == "fake" and answer.model == "fake-model" and answer.usage_record_id
    assert answer.citations == [{"n": 1, "document_id": tides.pk, "chunk_id": meta["sources"][0]["chunk_id"],
                                 "title": "Tides", "url": f"/d/{tides.slug}/"}]
    question = conversation.messages.get(role=Message.Role.USER)
    assert question.content == "What causes tides?"
    conversation.refresh_from_db()
    assert conversation.title == "What causes tides?"
