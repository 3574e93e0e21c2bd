"""The stream over real HTTP: a uvicorn worker (ASGI) in a subprocess serving
the app against the test database, the fake upstream as the model, and a
streaming HTTP client. Ordering and cancellation are timed here because the
issue asks for that evidence."""

import time

import httpx
import pytest

from apps.chat.models import Message
from tests.chat.sse_client import ask, parse_sse
from tests.factories.chat import ConversationFactory
from tests.factories.documents import UserFactory
from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db(transaction=True)


def _open_conversation(client: httpx.Client) -> int:
    response = client.post("/api/v1/chat/conversations", json={})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _events(lines) -> list:
    """(monotonic time, event, data) per event as the bytes arrive."""
    buffer = ""
    for text in lines:
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for kind, data in parse_sse(block + "\n\n"):
                yield time.monotonic(), kind, data


def test_first_token_reaches_the_client_before_the_upstream_finishes(app_server, fake_upstream):
    indexed_document(title="Orbits", body="Planets follow elliptical orbits around the Sun.")
    fake_upstream.configure(tokens=6, token_delay=0.25)
    with httpx.Client(base_url=app_server.url, timeout=10) as client:
        pk = _open_conversation(client)
        sent_at = time.monotonic()
        with client.stream("POST", f"/api/v1/chat/conversations/{pk}/messages", json={"question": "orbits?"},
                           headers={"accept": "text/event-stream"}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert "gzip" not in response.headers.get("content-encoding", "")
            events = list(_events(response.iter_text()))
    upstream_started = fake_upstream.requests[-1]["time"]
    upstream_finished_earliest = upstream_started + 6 * 0.25  # it sleeps before every token
    first_token = next(t for t, kind, _ in events if kind == "token")
    done = next(t for t, kind, _ in events if kind == "done")
    assert sent_at < upstream_started < first_token < upstream_finished_earliest <= done
    assert [kind for _, kind, _ in events].count("token") == 6


def test_disconnect_cancels_the_upstream_within_a_second_and_saves_partial(app_server, fake_upstream):
    indexed_document(title="Comets", body="Comets grow tails of gas and dust near the Sun.")
    fake_upstream.configure(tokens=12, token_delay=0.25)
    with httpx.Client(base_url=app_server.url, timeout=10) as client:
        pk = _open_conversation(client)
        with client.stream("POST", f"/api/v1/chat/conversations/{pk}/messages", json={"question": "comets?"},
                           headers={"accept": "text/event-stream"}) as response:
            seen = []
            for _, kind, data in _events(response.iter_text()):
                seen.append((kind, data))
                if kind == "token":
                    break
            message_id = seen[0][1]["message_id"]
            closed_at = time.monotonic()
            response.close()  # the reader goes away mid-answer
    deadline = time.monotonic() + 5
    while not fake_upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_upstream.disconnects, "the upstream request was never cancelled"
    assert fake_upstream.disconnects[-1] - closed_at < 1.0
    while time.monotonic() < deadline:
        message = Message.objects.get(pk=message_id)
        if message.content:
            break
        time.sleep(0.05)
    assert message.status == Message.Status.PARTIAL
    assert message.content.startswith("tok0 ") and not message.content.startswith("tok0 tok1 tok2 tok3 tok4 tok5")
    assert "disconnected" in message.error


def _answer_with_heartbeat(llm, settings, *, heartbeat: float, tokens: int, token_delay: float) -> list:
    settings.CHAT_HEARTBEAT_SECONDS = heartbeat
    reader = UserFactory()
    indexed_document(title="Moons", body="Jupiter has many moons.")
    llm.configure(tokens=tokens, token_delay=token_delay)
    conversation = ConversationFactory(owner=reader)
    return ask(f"/chat/{conversation.pk}/messages", "moons?", user=reader)[1]


def test_heartbeat_comments_keep_a_slow_stream_alive(llm, settings):
    events = _answer_with_heartbeat(llm, settings, heartbeat=0.1, tokens=2, token_delay=0.35)
    kinds = [kind for kind, _ in events]
    assert kinds.count(":") >= 2 and kinds[-1] == "done"


def test_no_heartbeat_while_tokens_arrive_sooner_than_the_interval(llm, settings):
    # The stream's one timer is set again from the last write: tokens (and the fake's three
    # closing chunks) 0.1 s apart never leave the 1.5 s answer silent for 0.6 s, so a clock
    # that ticked regardless of writes would show at least two heartbeats here.
    events = _answer_with_heartbeat(llm, settings, heartbeat=0.6, tokens=12, token_delay=0.1)
    kinds = [kind for kind, _ in events]
    assert kinds.count("token") == 12 and kinds[-1] == "done"
    assert events[-1][1]["latency_ms"] > 1200
    assert ":" not in kinds, " ".join(kinds)


def test_an_answer_is_cut_after_the_maximum_duration(llm, settings):
    settings.CHAT_MAX_STREAM_SECONDS = 0.6
    reader = UserFactory()
    indexed_document(title="Stars", body="Stars fuse hydrogen into helium.")
    llm.configure(tokens=20, token_delay=0.2)
    conversation = ConversationFactory(owner=reader)
    _, events = ask(f"/chat/{conversation.pk}/messages", "stars?", user=reader)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "max_duration"
    message = Message.objects.get(pk=events[0][1]["message_id"])
    assert message.status == Message.Status.PARTIAL and message.content.startswith("tok0")


def test_the_page_stream_path_still_enforces_csrf_and_ownership(app_server, fake_upstream):
    with httpx.Client(base_url=app_server.url, timeout=10) as client:
        pk = _open_conversation(client)  # this anonymous session's conversation
        refused = client.post(f"/chat/{pk}/messages", json={"question": "hi"})
        assert refused.status_code == 403  # no CSRF token
        page = client.get(f"/chat/{pk}/")
        token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
        other = httpx.post(f"{app_server.url}/chat/{pk}/messages", json={"question": "hi"},
                           headers={"X-CSRFToken": token}, cookies={"csrftoken": client.cookies["csrftoken"]})
        assert other.status_code == 404  # a valid token, but not this session's conversation
        # A body too big for a valid question is not parsed early on the event loop: the
        # request thread parses it and refuses it in the envelope, before any model call.
        huge = client.post(f"/chat/{pk}/messages", json={"question": "tides " * 5000}, headers={"X-CSRFToken": token})
        assert huge.status_code == 400 and huge.json()["error"]["code"] == "question_too_long"
        with client.stream("POST", f"/chat/{pk}/messages", json={"question": "hi"},
                           headers={"X-CSRFToken": token}) as response:
            assert response.status_code == 200
            kinds = [kind for _, kind, _ in _events(response.iter_text())]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    assert fake_upstream.calls() == 1


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def test_the_api_stream_answers_token_callers_and_keeps_the_envelope(app_server, fake_upstream):
    """The API's question goes through the lean path (apps.chat.asgi), DRF's checks still apply."""
    from rest_framework.authtoken.models import Token

    fake_upstream.configure(tokens=3, token_delay=0.0)
    indexed_document(title="Tides", body="The Moon's gravity raises the tides.")
    reader, stranger = UserFactory(), UserFactory()
    token = Token.objects.create(user=reader)
    mine, theirs = ConversationFactory(owner=reader), ConversationFactory(owner=stranger)
    auth = {"Authorization": f"Token {token.key}", "accept": "text/event-stream"}
    with httpx.Client(base_url=app_server.url, timeout=10) as client:
        with client.stream("POST", f"/api/v1/chat/conversations/{mine.pk}/messages", json={"question": "tides?"},
                           headers=auth) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            kinds = [kind for _, kind, _ in _events(response.iter_text())]
        assert kinds[0] == "meta" and kinds.count("token") == 3 and kinds[-1] == "done"
        assert mine.messages.filter(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE).count() == 1

        other = client.post(f"/api/v1/chat/conversations/{theirs.pk}/messages", json={"question": "hi"}, headers=auth)
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        empty = client.post(f"/api/v1/chat/conversations/{mine.pk}/messages", json={"question": ""}, headers=auth)
        assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_question"
        bad_token = client.post(f"/api/v1/chat/conversations/{mine.pk}/messages", json={"question": "hi"},
                                headers={"Authorization": "Token nope"})
        assert bad_token.status_code == 401 and bad_token.json()["error"]["code"] == "authentication_failed"
        form = client.post(f"/api/v1/chat/conversations/{mine.pk}/messages", data={"question": "tides, again?"},
                           headers=auth)  # a form body: DRF parses it, no early embedding
        assert form.status_code == 200 and "event: done" in form.text
        listed = client.get(f"/api/v1/chat/conversations/{mine.pk}/messages", headers=auth)
        assert listed.status_code == 200
        assert [m["role"] for m in listed.json()["results"]] == ["user", "assistant", "user", "assistant"]


def test_an_open_api_stream_keeps_no_thread(app_server, fake_upstream):
    """Django's regular handler keeps a thread per request until its response ends: for a
    streamed answer, as long as the answer lasts. The API's questions take the lean path."""
    import asyncio

    from rest_framework.authtoken.models import Token

    fake_upstream.configure(tokens=40, token_delay=0.25)
    callers = []  # a reader each: the per-minute question limit is per reader
    for _ in range(32):
        reader = UserFactory()
        callers.append((ConversationFactory(owner=reader).pk, Token.objects.create(user=reader).key))

    async def hold(client, caller, first_token: asyncio.Event, release: asyncio.Event):
        pk, key = caller
        async with client.stream("POST", f"/api/v1/chat/conversations/{pk}/messages", json={"question": "hold"},
                                 headers={"Authorization": f"Token {key}", "accept": "text/event-stream"}) as response:
            assert response.status_code == 200, await response.aread()
            async for text in response.aiter_text():
                if "event: token" in text:
                    break
            first_token.set()
            await release.wait()

    async def main():
        release = asyncio.Event()
        async with httpx.AsyncClient(base_url=app_server.url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as client:
            started, counts = [], []
            for batch in (callers[:8], callers[8:]):
                events = [asyncio.Event() for _ in batch]
                started += [asyncio.create_task(hold(client, caller, event, release))
                            for caller, event in zip(batch, events, strict=True)]
                await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 20)
                counts.append(_threads(app_server.proc.pid))
            release.set()
            await asyncio.gather(*started)
            return counts

    with_8, with_32 = asyncio.run(main())
    assert with_32 - with_8 < 12, (with_8, with_32)  # the regular handler: one more thread per stream (24)


def test_a_signed_in_session_needs_csrf_on_the_api_stream_too(app_server, fake_upstream):
    """On the lean path the API's session authentication still checks CSRF (DRF's check, on the
    user read on the loop): a cookie alone cannot make a signed-in reader ask."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    from apps.core.sessions import SessionStore

    fake_upstream.configure(tokens=2, token_delay=0.0)
    reader = UserFactory()
    session = SessionStore()
    session.update({SESSION_KEY: str(reader.pk), BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[0],
                    HASH_SESSION_KEY: reader.get_session_auth_hash()})
    session.save()
    conversation = ConversationFactory(owner=reader)
    url = f"{app_server.url}/api/v1/chat/conversations/{conversation.pk}/messages"
    csrf = "a" * 32
    cookies = {settings.SESSION_COOKIE_NAME: session.session_key, settings.CSRF_COOKIE_NAME: csrf}
    forged = httpx.post(url, json={"question": "tides?"}, cookies=cookies, timeout=10)
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "permission_denied"
    assert "CSRF" in forged.json()["error"]["message"]
    asked = httpx.post(url, json={"question": "tides?"}, cookies=cookies, timeout=10,
                       headers={"X-CSRFToken": csrf, "Referer": app_server.url + "/chat/", "accept": "text/event-stream"})
    assert asked.status_code == 200 and "event: done" in asked.text
    assert conversation.messages.filter(role=Message.Role.USER).count() == 1  # only the one with its token
