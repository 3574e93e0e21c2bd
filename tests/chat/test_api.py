"""Conversation API: your own conversations only (someone else's is a 404),
anonymous callers scoped to their session; limits come back in the envelope."""

import pytest
from django.test import AsyncClient
from rest_framework.test import APIClient

from apps.chat.models import Conversation, Message
from tests.chat.sse_client import ask, first
from tests.factories.chat import ConversationFactory, MessageFactory
from tests.factories.documents import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader():
    return UserFactory()


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_list_retrieve_and_delete_own_conversations(reader):
    from apps.documents.models import Document
    from tests.factories.documents import DocumentFactory

    tides = DocumentFactory(title="Tides", slug="tides", status=Document.Status.PUBLISHED)
    mine = ConversationFactory(owner=reader, title="Mine")
    MessageFactory(conversation=mine, content="What is a tide?")
    MessageFactory(conversation=mine, role=Message.Role.ASSISTANT, content="Water moving [1].",
                   citations=[{"n": 1, "document_id": tides.pk, "chunk_id": 9, "title": "Tides", "url": "/d/tides/"}])
    ConversationFactory(owner=UserFactory(), title="Theirs")
    client = api(reader)

    listed = client.get("/api/v1/chat/conversations").json()
    assert [c["title"] for c in listed["results"]] == ["Mine"]
    assert listed["results"][0]["message_count"] == 2

    detail = client.get(f"/api/v1/chat/conversations/{mine.pk}").json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert detail["messages"][1]["citations"][0]["url"] == "/d/tides/"
    messages = client.get(f"/api/v1/chat/conversations/{mine.pk}/messages").json()
    assert [m["content"] for m in messages["results"]] == ["What is a tide?", "Water moving [1]."]

    assert client.delete(f"/api/v1/chat/conversations/{mine.pk}").status_code == 204
    assert not Conversation.objects.filter(pk=mine.pk).exists()
    assert not Message.objects.filter(conversation_id=mine.pk).exists()


def test_someone_elses_conversation_is_a_404_everywhere(reader, llm):
    theirs = ConversationFactory(owner=UserFactory())
    client = api(reader)
    for method, path in [("get", ""), ("delete", ""), ("get", "/messages"), ("post", "/messages")]:
        response = getattr(client, method)(f"/api/v1/chat/conversations/{theirs.pk}{path}",
                                           {"question": "hi"} if method == "post" else None, format="json")
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    response, events = ask(f"/chat/{theirs.pk}/messages", "hi", user=reader)
    assert response.status_code == 404 and events == []
    assert client.get(f"/chat/{theirs.pk}/").status_code == 404
    assert Conversation.objects.get(pk=theirs.pk).messages.count() == 0
    assert llm.calls() == 0


def test_anonymous_conversations_belong_to_their_session(llm):
    first_reader, second_reader = APIClient(), APIClient()
    created = first_reader.post("/api/v1/chat/conversations", {"title": "Anon"}, format="json")
    assert created.status_code == 201
    pk = created.json()["id"]
    assert Conversation.objects.get(pk=pk).owner is None
    assert [c["id"] for c in first_reader.get("/api/v1/chat/conversations").json()["results"]] == [pk]
    assert second_reader.get("/api/v1/chat/conversations").json()["results"] == []
    assert second_reader.get(f"/api/v1/chat/conversations/{pk}").status_code == 404
    assert first_reader.get(f"/api/v1/chat/conversations/{pk}").status_code == 200


def test_conversations_started_anonymously_follow_the_reader_who_signs_in(llm, client):
    """Signing in rotates the session key; the session's own threads move to the account."""
    from django.test import Client

    started = client.post("/api/v1/chat/conversations", {"title": "Before sign-in"}, content_type="application/json")
    assert started.status_code == 201
    pk = started.json()["id"]
    stranger = Client()
    theirs = stranger.post("/api/v1/chat/conversations", {"title": "Someone else"},
                           content_type="application/json").json()["id"]
    reader = UserFactory()

    assert client.login(username=reader.username, password="pw-for-tests-1")

    assert [c["id"] for c in client.get("/api/v1/chat/conversations").json()["results"]] == [pk]
    adopted = Conversation.objects.get(pk=pk)
    assert adopted.owner == reader and adopted.session_key == ""
    assert Conversation.objects.get(pk=theirs).owner is None  # another session's thread stays theirs
    assert stranger.get(f"/api/v1/chat/conversations/{theirs}").status_code == 200


def test_api_streams_the_answer_for_an_event_stream_client(reader, llm):
    llm.configure(text="Hello there.")
    conversation = ConversationFactory(owner=reader)
    response, events = ask(f"/api/v1/chat/conversations/{conversation.pk}/messages", "Say hello", user=reader)
    assert response["Content-Type"].startswith("text/event-stream")
    assert [k for k, _ in events] == ["meta", "token", "token", "citations", "done"]
    done = first(events, "done")
    assert done["status"] == "complete" and 0 < done["retrieval_ms"] < done["prepare_ms"]


def test_question_length_is_limited_with_a_clear_error(reader, settings, llm):
    settings.CHAT_MAX_QUESTION_CHARS = 20
    conversation = ConversationFactory(owner=reader)
    response = api(reader).post(f"/api/v1/chat/conversations/{conversation.pk}/messages",
                                {"question": "x" * 21}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "question_too_long" and "limit is 20" in error["message"]
    page_response, _ = ask(f"/chat/{conversation.pk}/messages", "   ", user=reader)
    assert page_response.status_code == 400 and page_response.json()["error"]["code"] == "empty_question"
    assert conversation.messages.count() == 0 and llm.calls() == 0


def test_a_question_with_a_null_character_is_refused_on_both_routes(reader, llm):
    conversation = ConversationFactory(owner=reader)
    page_response, events = ask(f"/chat/{conversation.pk}/messages", "why\x00?", user=reader)
    assert page_response.status_code == 400 and events == []  # not a 500 from PostgreSQL
    assert page_response.json()["error"] == {
        "code": "invalid_question", "message": "Null characters are not allowed.", "details": None,
        "request_id": page_response.json()["error"]["request_id"]}
    api_response = api(reader).post(f"/api/v1/chat/conversations/{conversation.pk}/messages",
                                    {"question": "why\x00?"}, format="json")
    assert api_response.status_code == 400
    assert api_response.json()["error"]["message"] == "question: Null characters are not allowed."
    assert conversation.messages.count() == 0 and llm.calls() == 0


def test_the_page_route_refuses_a_lone_surrogate_or_a_question_that_is_not_a_string(reader, llm):
    conversation = ConversationFactory(owner=reader)
    path = f"/chat/{conversation.pk}/messages"
    refused = {
        '{"question": "why \\ud800?"}': "Surrogate characters are not allowed: U+D800.",  # was a 500 (psycopg)
        '{"question": ["why?"]}': "The question must be a string.",  # was asked as "['why?']"
        '{"question": 42}': "The question must be a string.",
    }
    for body, message in refused.items():
        response, events = ask(path, None, user=reader, body=body)
        assert response.status_code == 400 and events == [], body
        assert (response.json()["error"]["code"], response.json()["error"]["message"]) == ("invalid_question", message)
    api_response = api(reader).post(f"/api/v1/chat/conversations/{conversation.pk}/messages",
                                    '{"question": "why \\ud800?"}', content_type="application/json")
    assert api_response.json()["error"]["message"] == "question: Surrogate characters are not allowed: U+D800."
    assert conversation.messages.count() == 0 and llm.calls() == 0


def test_a_body_django_refuses_to_read_is_an_envelope_on_both_routes(reader, llm, settings):
    conversation = ConversationFactory(owner=reader)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 20_000
    body = '{"question": "' + "x" * 20_000 + '"}'
    api_response = api(reader).post(f"/api/v1/chat/conversations/{conversation.pk}/messages", body,
                                    content_type="application/json")
    assert api_response.status_code == 413  # was a 500
    assert api_response.json()["error"]["code"] == "payload_too_large"
    page_response, events = ask(f"/chat/{conversation.pk}/messages", None, user=reader, body=body)
    assert page_response.status_code == 413 and events == []  # was Django's HTML 400 page
    assert page_response.json()["error"]["code"] == "payload_too_large"
    assert conversation.messages.count() == 0 and llm.calls() == 0


def test_a_body_nested_too_deeply_is_refused_on_both_routes(reader, llm):
    conversation = ConversationFactory(owner=reader)
    # A RecursionError in json.loads, was a 500; the page route reads a small body on the event
    # loop and a large one in its thread.
    for depth in (3_000, 100_000):
        body = '{"question": ' + "[" * depth + "]" * depth + "}"
        api_response = api(reader).post(f"/api/v1/chat/conversations/{conversation.pk}/messages", body,
                                        content_type="application/json")
        assert api_response.status_code == 400 and api_response.json()["error"]["code"] == "parse_error"
        page_response, events = ask(f"/chat/{conversation.pk}/messages", None, user=reader, body=body)
        assert page_response.status_code == 400 and events == []
        assert page_response.json()["error"]["code"] == "empty_question"  # like any body that is not JSON
    assert conversation.messages.count() == 0 and llm.calls() == 0


def test_questions_per_conversation_are_limited(reader, settings, llm):
    settings.CHAT_MAX_QUESTIONS_PER_CONVERSATION = 1
    conversation = ConversationFactory(owner=reader)
    ok, _ = ask(f"/chat/{conversation.pk}/messages", "first question", user=reader)
    assert ok.status_code == 200
    response, events = ask(f"/chat/{conversation.pk}/messages", "second question", user=reader)
    assert response.status_code == 409 and events == []
    assert response.json()["error"]["code"] == "conversation_full"
    assert "Start a new conversation" in response.json()["error"]["message"]


def test_questions_per_minute_are_limited_per_user(reader, settings, llm):
    settings.CHAT_QUESTIONS_PER_MINUTE = 2
    conversation = ConversationFactory(owner=reader)
    client = api(reader)
    path = f"/api/v1/chat/conversations/{conversation.pk}/messages"
    for _ in range(2):
        response, _ = ask(path, "a question", user=reader)
        assert response.status_code == 200
    response = client.post(path, {"question": "one too many"}, format="json")
    assert response.status_code == 429
    body = response.json()["error"]
    assert body["code"] == "chat_rate_limited" and body["details"]["retry_after"] >= 1
    assert int(response["Retry-After"]) >= 1
    # Another user is not affected.
    other = UserFactory()
    theirs = ConversationFactory(owner=other)
    response, _ = ask(f"/api/v1/chat/conversations/{theirs.pk}/messages", "a question", user=other)
    assert response.status_code == 200


def test_anonymous_readers_are_limited_per_session(settings, llm, client):
    settings.CHAT_ANON_QUESTIONS_PER_MINUTE = 1
    client.get("/chat/")
    created = client.post("/chat/", HTTP_ACCEPT="application/json").json()
    async_client = AsyncClient()
    async_client.cookies = client.cookies
    ok, _ = ask(created["messages_url"], "first", client=async_client)
    assert ok.status_code == 200
    refused, events = ask(created["messages_url"], "second", client=async_client)
    assert refused.status_code == 429 and events == []
    assert refused.json()["error"]["code"] == "chat_rate_limited"
    assert "Try again in" in refused.json()["error"]["message"]
    assert int(refused["Retry-After"]) >= 1


class AddressedClient(AsyncClient):
    """An AsyncClient whose requests come from ``address`` (the ASGI scope's client)."""

    def __init__(self, address: str):
        super().__init__()
        self.address = address

    def _base_scope(self, **request):
        return {**super()._base_scope(**request), "client": [self.address, 50000]}


def _anonymous_conversation(remote_addr: str = "127.0.0.1") -> tuple[str, AsyncClient]:
    """A new anonymous session (a new reader, or the same one with its cookie thrown away) and
    its conversation's messages URL, asking from ``remote_addr``."""
    from django.test import Client

    client = Client(REMOTE_ADDR=remote_addr)
    client.get("/chat/")
    created = client.post("/chat/", HTTP_ACCEPT="application/json").json()
    asker = AddressedClient(remote_addr)
    asker.cookies = client.cookies
    return created["messages_url"], asker


def test_anonymous_sessions_from_one_address_share_a_limit(settings, llm):
    """A new anonymous session costs nothing, so a per-session limit alone holds back no one:
    all anonymous sessions from one address share CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS.
    Other addresses and signed-in readers are not counted against it."""
    settings.CHAT_ANON_QUESTIONS_PER_MINUTE = 5
    settings.CHAT_ANON_QUESTIONS_PER_MINUTE_PER_ADDRESS = 2
    for i in range(2):
        url, asker = _anonymous_conversation()
        assert ask(url, f"question {i}", client=asker)[0].status_code == 200
    url, asker = _anonymous_conversation()  # a third fresh session, same address
    refused, events = ask(url, "one more", client=asker)
    assert refused.status_code == 429 and events == []
    error = refused.json()["error"]
    assert error["code"] == "chat_rate_limited" and error["details"]["scope"] == "address"
    assert error["details"]["limit_per_minute"] == 2 and "network address" in error["message"]
    assert Message.objects.filter(content="one more").count() == 0  # refused before anything was saved

    url, asker = _anonymous_conversation("203.0.113.9")
    assert ask(url, "from elsewhere", client=asker)[0].status_code == 200
    # IPv6: one /64 is one client (a host is routinely given a whole /64 to pick addresses from).
    for i, address in enumerate(("2001:db8:1:2::1", "2001:db8:1:2:aaaa::5")):
        url, asker = _anonymous_conversation(address)
        assert ask(url, f"v6 question {i}", client=asker)[0].status_code == 200
    url, asker = _anonymous_conversation("2001:db8:1:2:ffff::9")
    assert ask(url, "v6 one more", client=asker)[0].status_code == 429
    url, asker = _anonymous_conversation("2001:db8:1:3::1")  # the next /64
    assert ask(url, "v6 elsewhere", client=asker)[0].status_code == 200
    reader = UserFactory()
    mine = ConversationFactory(owner=reader)
    signed_in = AddressedClient("127.0.0.1")
    response, _ = ask(f"/api/v1/chat/conversations/{mine.pk}/messages", "signed in", user=reader, client=signed_in)
    assert response.status_code == 200


def test_when_the_anonymous_budget_is_spent_the_stream_says_to_sign_in(settings, llm):
    """LLM_ANONYMOUS_MONTHLY_BUDGET_USD spent: an anonymous question gets the `error` event
    (budget_exceeded, asking to sign in) without a model call, and the answer is saved as an
    error; a signed-in reader is still answered."""
    from decimal import Decimal

    from apps.llm.models import UsageRecord

    settings.LLM_ANONYMOUS_MONTHLY_BUDGET_USD = Decimal("0.0001")
    UsageRecord.objects.create(route="chat", provider="fake", model="fake-model", cost_usd=Decimal("0.0002"),
                               anonymous=True)  # this month's anonymous spend, already over
    url, asker = _anonymous_conversation()
    response, events = ask(url, "What causes tides?", client=asker)
    assert response.status_code == 200 and llm.calls() == 0
    error = first(events, "error")
    assert error["code"] == "budget_exceeded" and "sign in" in error["message"]
    answer = Message.objects.get(pk=first(events, "meta")["message_id"])
    assert answer.status == Message.Status.ERROR and "budget_exceeded" in answer.error

    reader = UserFactory()
    mine = ConversationFactory(owner=reader)
    response, events = ask(f"/api/v1/chat/conversations/{mine.pk}/messages", "What causes tides?", user=reader)
    assert response.status_code == 200 and events[-1][0] == "done" and llm.calls() == 1


def test_openapi_describes_the_stream_and_its_events(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    post = schema["paths"]["/api/v1/chat/conversations/{id}/messages"]["post"]
    assert list(post["responses"]["200"]["content"]) == ["text/event-stream"]
    assert {"400", "404", "409", "429"} <= set(post["responses"])
    for event in ("`meta`", "`token`", "`citations`", "`done`", "`error`"):
        assert event in post["description"]
    components = schema["components"]["schemas"]
    assert {"MetaEvent", "TokenEvent", "CitationsEvent", "DoneEvent", "ErrorEvent"} <= set(components)


def test_the_api_question_is_embedded_while_the_caller_is_checked(reader, llm, monkeypatch):
    """As on the page, the question's query embedding starts before DRF authenticates and
    checks the caller, and the retrieval uses that very vector; a caller without credentials
    gets none started (its request is refused or anonymous, nothing to overlap)."""
    from rest_framework.authtoken.models import Token

    from apps.chat import services
    from tests.factories.search import indexed_document

    started = []
    real = services.aembed_question_soon

    def spy(question):
        task = real(question)
        started.append((question, task))
        return task

    monkeypatch.setattr(services, "aembed_question_soon", spy)
    tides = indexed_document(title="Tides", body="Tides are caused by the gravity of the Moon and the Sun.")
    llm.configure(text="The Moon [1].")
    conversation = ConversationFactory(owner=reader)
    token = Token.objects.create(user=reader)
    auth = {"authorization": f"Token {token.key}"}
    response, events = ask(f"/api/v1/chat/conversations/{conversation.pk}/messages", "What causes tides?",
                           headers=auth)
    assert response.status_code == 200, response.content
    assert first(events, "meta")["sources"][0]["document_id"] == tides.pk
    assert [question for question, _ in started] == ["What causes tides?"]
    assert started[0][1].done() and not started[0][1].cancelled()  # read by the retrieval

    refused = ask(f"/api/v1/chat/conversations/{ConversationFactory(owner=UserFactory()).pk}/messages",
                  "What causes tides?", headers=auth)[0]
    assert refused.status_code == 404 and started[-1][1].done()  # not the caller's: nothing left pending
    anonymous = ask(f"/api/v1/chat/conversations/{conversation.pk}/messages", "tides?")[0]
    assert anonymous.status_code == 404  # no credentials: an anonymous caller without a session owns nothing
    assert len(started) == 2
