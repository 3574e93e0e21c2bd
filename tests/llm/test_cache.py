"""The response cache: identical answers without an upstream call, never across permission scopes."""

import pytest
from prometheus_client import REGISTRY

from apps.core.text import TextBuffer
from apps.llm import ledger
from apps.llm.models import UsageRecord
from apps.llm.services import ChatRequest, acomplete
from apps.llm.testing import collect, run
from tests.llm.conftest import question


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("quire_llm_cache_total", {"route": "chat", "result": result}) or 0.0


def text_of(events) -> str:
    return "".join(e.text for e in events if e.type == "token")


@pytest.mark.django_db
def test_a_cache_hit_returns_identical_content_without_calling_upstream(proxy):
    hits, misses = cache_count("hit"), cache_count("miss")
    first = run(collect, ChatRequest(route="chat", messages=question(), scope="user:1"))
    # Same question with different spacing is the same question.
    again = run(collect, ChatRequest(route="chat", messages=question("What  does aspirin do? "), scope="user:1"))
    assert proxy.primary.calls() == 1
    assert text_of(again) == text_of(first) == first[-1].text
    assert again[-1].cached is True and first[-1].cached is False
    assert again[-1].cost == 0 and first[-1].cost > 0
    assert len([e for e in again if e.type == "token"]) == 1  # replayed at once, not token by token
    assert (cache_count("hit") - hits, cache_count("miss") - misses) == (1, 1)
    # The non-streaming path shares the same cache.
    result = run(acomplete, ChatRequest(route="chat", messages=question(), scope="user:1"))
    assert result.cached and result.text == first[-1].text and proxy.primary.calls() == 1
    ledger.flush()
    assert UsageRecord.objects.filter(cache_hit=True).count() == 2


@pytest.mark.django_db
def test_the_answer_is_kept_in_the_callers_buffer_on_a_miss_and_on_a_hit(proxy):
    """A caller that needs the text (chat saves it) hands its buffer over and keeps no copy."""
    missed, hit = TextBuffer(), TextBuffer()
    first = run(collect, ChatRequest(route="chat", messages=question(), scope="user:1", answer=missed))
    again = run(collect, ChatRequest(route="chat", messages=question(), scope="user:1", answer=hit))
    assert first[-1].cached is False and again[-1].cached is True
    assert missed.text() == hit.text() == first[-1].text == again[-1].text == text_of(first)
    assert len([e for e in first if e.type == "token"]) > 1


@pytest.mark.django_db
def test_cached_answers_are_not_shared_across_permission_scopes(proxy):
    run(collect, ChatRequest(route="chat", messages=question(), scope="staff"))
    other = run(collect, ChatRequest(route="chat", messages=question(), scope="user:7"))
    assert other[-1].cached is False and proxy.primary.calls() == 2
    anonymous = run(collect, ChatRequest(route="chat", messages=question(), scope="anonymous"))
    assert anonymous[-1].cached is False and proxy.primary.calls() == 3


@pytest.mark.django_db
def test_different_passages_are_a_different_question(proxy):
    run(collect, ChatRequest(route="chat", messages=question(), passages=[{"n": 1, "text": "a"}]))
    run(collect, ChatRequest(route="chat", messages=question(), passages=[{"n": 1, "text": "b"}]))
    assert proxy.primary.calls() == 2


@pytest.mark.django_db
def test_cache_false_bypasses_the_cache(proxy):
    run(collect, ChatRequest(route="chat", messages=question()))
    bypass = run(collect, ChatRequest(route="chat", messages=question(), cache=False))
    assert bypass[-1].cached is False and proxy.primary.calls() == 2


@pytest.mark.django_db
def test_partial_answers_are_never_cached(proxy):
    proxy.primary.configure(fail="drop", fail_count=1)
    assert run(collect, ChatRequest(route="chat", messages=question()))[-1].type == "error"
    done = run(collect, ChatRequest(route="chat", messages=question()))[-1]
    assert done.type == "done" and done.cached is False and proxy.primary.calls() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("stored", [b"not json", b'{"text": "hi"}', b'{"text": 1, "provider": "p", "model": "m", '
                                    b'"usage": [1, 2, false]}', b"[1, 2, 3]"])
def test_a_malformed_cache_entry_is_a_miss_and_gets_overwritten(proxy, stored):
    import redis
    from django.conf import settings

    from apps.llm.services import response_cache_key

    request = ChatRequest(route="chat", messages=question(), scope="user:1")
    redis.Redis.from_url(settings.REDIS_URL).set(response_cache_key(request), stored, ex=60)
    misses = cache_count("miss")
    answered = run(collect, request)
    assert answered[-1].type == "done" and answered[-1].cached is False and proxy.primary.calls() == 1
    assert cache_count("miss") - misses == 1
    again = run(collect, ChatRequest(route="chat", messages=question(), scope="user:1"))
    assert again[-1].cached is True and text_of(again) == text_of(answered)  # the bad entry was replaced
