"""Backends over real HTTP (the fake upstream on 127.0.0.1) and the extractive last resort."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.llm import ledger
from apps.llm.conf import get_provider
from apps.llm.models import UsageRecord
from apps.llm.services import (
    ChatRequest,
    complete,
    count_message_tokens,
    count_tokens,
    count_tokens_batch,
    route_config,
)
from apps.llm.testing import EXTRACTIVE, collect, run
from tests.llm.conftest import question

PASSAGES = [
    {"n": 1, "title": "Aspirin", "text": "Aspirin reduces fever and pain. It thins the blood.", "document_id": 1},
    {"n": 2, "title": "Bananas", "text": "Bananas are yellow fruit grown in the tropics.", "document_id": 2},
]


@pytest.mark.django_db
def test_openai_compatible_stream_takes_usage_from_the_stream(proxy):
    proxy.primary.configure(text="Aspirin reduces fever.")
    events = run(collect, ChatRequest(route="chat", messages=question()))
    assert [e.text for e in events if e.type == "token"] == ["Aspirin ", "reduces ", "fever."]
    done = events[-1]
    assert done.type == "done" and done.provider == "primary" and done.model == "fake-model"
    assert done.text == "Aspirin reduces fever."
    assert done.usage.estimated is False and done.usage.completion_tokens == 3
    body = proxy.primary.requests[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.1 and body["max_tokens"] == 200  # route params and max tokens


@pytest.mark.django_db
def test_non_streaming_complete_uses_a_plain_request(proxy):
    result = complete(ChatRequest(route="chat", messages=question(), params={"max_tokens": 50}))
    assert result.text.startswith("tok0 tok1") and result.provider == "primary"
    assert proxy.primary.requests[-1]["body"]["stream"] is False
    assert proxy.primary.requests[-1]["body"]["max_tokens"] == 50
    row = UsageRecord.objects.get(pk=result.usage_record_id)  # complete() writes its row before returning
    assert row.streamed is False and row.cost_usd == result.cost


@pytest.mark.django_db
def test_caller_cannot_exceed_the_route_max_tokens(proxy):
    complete(ChatRequest(route="chat", messages=question(), params={"max_tokens": 100_000}))
    assert proxy.primary.requests[-1]["body"]["max_tokens"] == 200


@pytest.mark.django_db
def test_anthropic_messages_streaming_events_over_http(proxy, settings):
    settings.LLM_ROUTES = {"chat": {"providers": ["secondary"], "max_tokens": 64}}
    proxy.secondary.configure(text="Hello from Claude")
    events = run(collect, ChatRequest(route="chat", messages=question()))
    assert "".join(e.text for e in events if e.type == "token") == "Hello from Claude"
    done = events[-1]
    assert done.provider == "secondary" and done.usage.completion_tokens == 3 and not done.usage.estimated
    body = proxy.secondary.requests[-1]["body"]
    assert body["system"] == "Answer briefly." and [m["role"] for m in body["messages"]] == ["user"]
    assert body["max_tokens"] == 64


@pytest.mark.django_db
def test_anthropic_gets_only_the_params_it_accepts(proxy, settings):
    settings.LLM_ROUTES = {"chat": {"providers": ["secondary"], "max_tokens": 64,
                                    "params": {"temperature": 0.3, "seed": 7, "presence_penalty": 1, "stop": "END"}}}
    run(collect, ChatRequest(route="chat", messages=question()))
    body = proxy.secondary.requests[-1]["body"]
    assert body["temperature"] == 0.3 and body["stop_sequences"] == ["END"]
    assert "seed" not in body and "presence_penalty" not in body and "stop" not in body


@pytest.mark.django_db
def test_without_any_model_the_extractive_backend_quotes_and_cites(settings):
    settings.LLM_PROVIDERS = {"extractive": EXTRACTIVE}
    settings.LLM_ROUTES = {"chat": {"providers": ["extractive"]}}
    events = run(collect, ChatRequest(route="chat", messages=question("What does aspirin do for fever?"),
                                      passages=PASSAGES))
    done = events[-1]
    assert done.type == "done" and done.provider == "extractive"
    assert done.text.startswith("No language model is configured")
    assert "Aspirin reduces fever and pain." in done.text and "[1]" in done.text
    assert "Bananas" not in done.text
    assert done.cost == 0 and done.usage.estimated is True
    assert ledger.flush() == 1


def test_default_settings_route_everything_to_the_extractive_backend():
    for name in ("chat", "enrich"):
        assert route_config(name).chain[-1].provider == "extractive"


def test_unknown_backend_options_are_rejected(settings):
    settings.LLM_PROVIDERS = {"bad": {"BACKEND": "apps.llm.backends.openai.OpenAIChatBackend",
                                      "OPTIONS": {"base_url": "http://x", "temprature": 1}}}
    with pytest.raises(ImproperlyConfigured, match="temprature"):
        get_provider("bad")


def test_unknown_route_keys_are_rejected(settings):
    settings.LLM_ROUTES = {"chat": {"providers": ["extractive"], "max_token": 5}}
    with pytest.raises(ImproperlyConfigured, match="max_token"):
        route_config("chat")


def test_tokens_are_counted_by_a_real_tokenizer_with_a_margin():
    # WordPiece splits rare words into several tokens; characters / 4 would not.
    assert count_tokens("chat", "hello world") == 3  # 2 tokens * 1.15, rounded up
    assert count_tokens("chat", "electroencephalography") > count_tokens("chat", "hello")
    long_text = "word " * 1000
    assert count_tokens("chat", long_text) == 1150  # no truncation at the embedding model's 128
    assert count_message_tokens("chat", question()) > count_tokens("chat", "What does aspirin do?")
    config = route_config("chat")
    assert config.max_prompt_tokens == config.context_window - config.max_tokens


def test_a_batch_count_equals_the_counts_one_by_one():
    texts = ["hello world", "", "electroencephalography of the <passage> block", "word " * 300,
             "Ünïcödé, punctuation!? and numbers 3.14159"]
    assert count_tokens_batch("chat", texts) == [count_tokens("chat", text) for text in texts]
    assert count_tokens_batch("chat", []) == []
