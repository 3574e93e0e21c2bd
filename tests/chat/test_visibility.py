"""Canary documents: a reader never receives citations, passages or sources
from documents they may not see — not in the stream, not in the prompt sent
to the model, not in what is saved."""

import pytest
from django.test import AsyncClient

from apps.chat.models import Message
from tests.chat.sse_client import ask, first
from tests.factories.chat import ConversationFactory
from tests.factories.documents import UserFactory
from tests.factories.search import plant_canaries

pytestmark = pytest.mark.django_db

SHARED = "Glacier calving events along the Greenland coast accelerate in late summer."


@pytest.fixture
def planted():
    return plant_canaries(shared=SHARED, public_title="Public glaciers", canary_words="{name}word zq{name}secret")


def _everything_sent(llm, events) -> str:
    prompt = " ".join(m["content"] for m in llm.requests[-1]["body"]["messages"]) if llm.requests else ""
    return repr(events) + prompt


def test_anonymous_reader_gets_nothing_from_canaries(llm, planted, client):
    _, public, canaries = planted
    llm.configure(text="See [1], [2], [3] and [4].")
    client.get("/chat/")  # a session, as the page gives one
    created = client.post("/chat/", HTTP_ACCEPT="application/json").json()
    _, events = ask(created["messages_url"],
                    "glacier calving Greenland zqinternalword zqprivateword zqdraftword",
                    client=_async_client_with(client))

    assert [s["document_id"] for s in first(events, "meta")["sources"]] == [public.pk]
    assert [c["document_id"] for c in first(events, "citations")["citations"]] == [public.pk]
    sent = _everything_sent(llm, events)
    for name in canaries:
        assert f"zq{name}secret" not in sent and f"Canary {name}" not in sent
    answer = Message.objects.get(pk=first(events, "meta")["message_id"])
    assert {s["document_id"] for s in answer.sources} == {public.pk}
    assert {c["document_id"] for c in answer.citations} == {public.pk}


def test_signed_in_reader_sees_internal_but_not_private_or_draft(llm, planted):
    author, public, canaries = planted
    reader = UserFactory()
    llm.configure(text="See [1], [2], [3] and [4].")
    conversation = ConversationFactory(owner=reader)
    _, events = ask(f"/chat/{conversation.pk}/messages", "glacier calving Greenland zqprivateword zqdraftword",
                    user=reader)
    seen = {s["document_id"] for s in first(events, "meta")["sources"]}
    assert seen == {public.pk, canaries["internal"].pk}
    assert {c["document_id"] for c in first(events, "citations")["citations"]} <= seen
    sent = _everything_sent(llm, events)
    assert "zqprivatesecret" not in sent and "zqdraftsecret" not in sent

    # The author sees their own private and draft documents.
    mine = ConversationFactory(owner=author)
    _, events = ask(f"/chat/{mine.pk}/messages", "glacier calving Greenland", user=author)
    assert {s["document_id"] for s in first(events, "meta")["sources"]} == {
        public.pk, *(c.pk for c in canaries.values())}


def test_extractive_answer_quotes_no_canary(no_llm, planted):
    _, public, canaries = planted
    reader = UserFactory()
    conversation = ConversationFactory(owner=reader)
    _, events = ask(f"/chat/{conversation.pk}/messages", "zqprivateword zqdraftword glacier calving", user=reader)
    text = "".join(d["text"] for k, d in events if k == "token")
    assert "Glacier calving" in text
    assert "zqprivatesecret" not in text and "zqdraftsecret" not in text
    assert {s["document_id"] for s in first(events, "meta")["sources"]} == {public.pk, canaries["internal"].pk}


def _async_client_with(client) -> AsyncClient:
    """An AsyncClient carrying the sync client's session cookie (same anonymous reader)."""
    async_client = AsyncClient()
    async_client.cookies = client.cookies
    return async_client


def test_an_old_thread_stops_showing_a_document_the_reader_may_no_longer_see(client):
    """Citations are saved with the answer; what a thread shows of them follows the documents'
    visibility now — on the page and in both API routes — and their current title and link."""
    from rest_framework.test import APIClient

    from apps.documents.models import Document
    from tests.factories.chat import MessageFactory
    from tests.factories.documents import DocumentFactory

    reader = UserFactory()
    kept = DocumentFactory(title="Tides", status=Document.Status.PUBLISHED, visibility=Document.Visibility.PUBLIC)
    hidden = DocumentFactory(title="Zqhiddentitle memo", status=Document.Status.PUBLISHED,
                             visibility=Document.Visibility.PUBLIC)
    conversation = ConversationFactory(owner=reader)
    cite = [{"n": 1, "document_id": kept.pk, "chunk_id": 1, "title": "Tides", "url": f"/d/{kept.slug}/"},
            {"n": 2, "document_id": hidden.pk, "chunk_id": 2, "title": hidden.title, "url": f"/d/{hidden.slug}/"}]
    answer = MessageFactory(conversation=conversation, role="assistant", content="The Moon [1], a memo [2].",
                            citations=cite)
    hidden.visibility, hidden.author = Document.Visibility.PRIVATE, UserFactory()  # someone else's now
    hidden.save()
    kept.title, kept.slug = "Tides and the Moon", "tides-and-the-moon"
    kept.save()

    shown = [{"n": 1, "document_id": kept.pk, "chunk_id": 1, "title": "Tides and the Moon",
              "url": "/d/tides-and-the-moon/"}]
    client.force_login(reader)
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "Zqhiddentitle" not in page and f"/d/{hidden.slug}/" not in page
    assert 'href="/d/tides-and-the-moon/"' in page
    api = APIClient()
    api.force_authenticate(reader)
    detail = api.get(f"/api/v1/chat/conversations/{conversation.pk}").json()
    assert [m["citations"] for m in detail["messages"]] == [shown]
    listed = api.get(f"/api/v1/chat/conversations/{conversation.pk}/messages").json()["results"]
    assert [m["citations"] for m in listed] == [shown]
    answer.refresh_from_db()
    assert answer.citations == cite  # what was answered stays on record; only what is shown follows visibility
