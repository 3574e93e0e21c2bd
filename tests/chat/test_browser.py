"""Real Chromium against a real uvicorn worker: ask on the chat page, watch the
answer stream in, follow the citation link to the document."""

import pytest

from tests.factories.search import indexed_document

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_reader_asks_and_sees_a_streamed_answer_with_a_citation_link(page, app_server, fake_upstream):
    doc = indexed_document(title="Lighthouse keepers", body="The keepers trimmed the lamp wicks every night.")
    fake_upstream.configure(text="Keepers trimmed the wicks nightly [1].", token_delay=0.25)
    page.goto(app_server.url + "/chat/")
    page.fill("#chat-question", "Who trimmed the lamp wicks?")
    page.click("#chat-send")

    answer = page.locator(".message.assistant").last
    # Mid-stream: part of the answer is on screen while the stream is still open.
    page.wait_for_selector(".message.assistant.streaming .content:has-text('Keepers')")
    assert "nightly" not in answer.locator(".content").inner_text()

    link = answer.locator(".content a.cite")
    link.wait_for()
    assert answer.locator(".content").inner_text() == "Keepers trimmed the wicks nightly [1]."
    assert link.inner_text() == "1" and link.get_attribute("href") == f"/d/{doc.slug}/"
    assert answer.locator(".sources a").inner_text() == "Lighthouse keepers"
    assert page.url.rstrip("/").split("/")[-2] == "chat"  # the new conversation's own URL

    page.reload()  # the conversation is kept for this session, its citation still linked
    assert page.locator(".chat-list li.current a").inner_text() == "Who trimmed the lamp wicks?"
    page.locator(".message.assistant .content a.cite").click()
    page.wait_for_url(f"**/d/{doc.slug}/")


def test_stop_ends_the_answer_cancels_the_model_call_and_keeps_what_was_said(page, app_server, fake_upstream):
    import time

    from apps.chat.models import Message

    indexed_document(title="Tides", body="Tides are caused by the gravity of the Moon.")
    fake_upstream.configure(text="The Moon pulls the oceans toward it twice every single day [1].", token_delay=0.3)
    page.goto(app_server.url + "/chat/")
    assert not page.locator("#chat-stop").is_visible()  # nothing to stop yet
    page.fill("#chat-question", "What causes tides?")
    page.click("#chat-send")
    page.wait_for_selector(".message.assistant.streaming .content:has-text('Moon')")
    page.locator("#chat-stop").click()
    stopped_at = time.monotonic()

    answer = page.locator(".message.assistant").last
    answer.locator(".message-state").wait_for()
    assert answer.locator(".message-state").inner_text() == "The answer was interrupted: you stopped it."
    assert "twice every single day" not in answer.locator(".content").inner_text()
    assert not page.locator("#chat-stop").is_visible() and page.locator("#chat-send").is_enabled()
    deadline = time.monotonic() + 5
    while not fake_upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.disconnects and fake_upstream.disconnects[-1] - stopped_at < 1.0  # the model call ended
    message = Message.objects.get(pk=answer.get_attribute("data-message-id"))
    deadline = time.monotonic() + 5
    while message.status == Message.Status.PARTIAL and not message.latency_ms and time.monotonic() < deadline:
        time.sleep(0.05)
        message.refresh_from_db()
    assert message.status == Message.Status.PARTIAL and message.content.startswith("The Moon")
    assert "twice every single day" not in message.content


@pytest.fixture
def extractive_server(django_db_blocker):
    """A worker with no LLM configured and one question per minute for anonymous readers."""
    from tests.chat.sse_client import AppServer
    from tests.conftest import child_env, free_port

    with django_db_blocker.unblock():
        env = child_env(CHAT_ANON_QUESTIONS_PER_MINUTE="1")
    for name in ("LLM_OPENAI_BASE_URL", "LLM_OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    server = AppServer(free_port(), env).start()
    yield server
    server.stop()


def test_without_a_model_the_page_says_so_and_shows_limit_errors(page, extractive_server):
    indexed_document(title="Lighthouse keepers", body="The keepers trimmed the lamp wicks every night.")
    page.goto(extractive_server.url + "/chat/")
    assert "No language model is configured" in page.locator("#chat-extractive-notice").inner_text()
    page.fill("#chat-question", "Who trimmed the lamp wicks?")
    page.click("#chat-send")
    meta = page.locator(".message.assistant .answer-meta.extractive")
    meta.wait_for()
    assert "no language model is configured" in meta.inner_text()
    assert page.locator(".message.assistant .content a.cite").first.inner_text() == "1"

    page.fill("#chat-question", "And who lit them?")
    page.click("#chat-send")
    error = page.locator("#chat-error")
    error.wait_for()
    assert "Try again in" in error.inner_text()
    assert page.locator(".message.user").count() == 1  # the refused question was not added
    assert page.input_value("#chat-question") == "And who lit them?"  # kept for a retry
