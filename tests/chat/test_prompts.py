"""The prompt fits the route's context window, counted with the real tokenizer:
history is trimmed first, then the lowest-ranked passages."""

import pytest

from apps.chat.citations import cited_numbers, resolve_citations
from apps.chat.prompts import PromptPassage, build_prompt
from apps.llm.services import count_message_tokens


def passage(n: int, words: int = 60) -> PromptPassage:
    return PromptPassage(n=n, document_id=100 + n, chunk_id=1000 + n, title=f"Doc {n}", url=f"/d/doc-{n}/",
                         text=" ".join(f"word{n}x{i}" for i in range(words)))


def turns(count: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "filler " * 40}
            for i in range(count)]


@pytest.fixture
def window(settings):
    def set_window(tokens: int, max_tokens: int = 100):
        settings.LLM_ROUTES = {**settings.LLM_ROUTES,
                               "chat": {"providers": ["extractive"], "max_tokens": max_tokens,
                                        "context_window": tokens}}
    return set_window


def test_everything_is_kept_when_it_fits(window):
    window(100_000)
    prompt = build_prompt(question="Why?", passages=[passage(1), passage(2)], history=turns(4))
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [p.n for p in prompt.passages] == [1, 2] and prompt.dropped_turns == 0


def test_history_goes_first_oldest_first_then_passages_lowest_ranked_first(window):
    window(100_000)
    full = build_prompt(question="Why?", passages=[passage(n) for n in (1, 2, 3)], history=turns(6))
    no_history = build_prompt(question="Why?", passages=[passage(n) for n in (1, 2, 3)], history=[])
    # A window that holds all passages but not all history: only the oldest turns go.
    window(no_history.prompt_tokens + 100 + 160)
    some = build_prompt(question="Why?", passages=[passage(n) for n in (1, 2, 3)], history=turns(6))
    assert [p.n for p in some.passages] == [1, 2, 3]
    assert 0 < some.dropped_turns < 6
    assert some.messages[1]["content"].startswith(f"turn {some.dropped_turns} ")
    # A window too small for every passage: all history is gone before any passage.
    window(no_history.prompt_tokens + 100 - 20)
    tight = build_prompt(question="Why?", passages=[passage(n) for n in (1, 2, 3)], history=turns(6))
    assert tight.dropped_turns == 6 and [p.n for p in tight.passages] == [1, 2]
    assert [m["role"] for m in tight.messages] == ["system", "user"]
    for prompt in (some, tight):
        assert count_message_tokens("chat", prompt.messages) <= prompt.prompt_tokens <= prompt.budget
    assert full.prompt_tokens > some.prompt_tokens > tight.prompt_tokens


def test_a_passage_counted_when_its_chunk_was_written_costs_what_counting_it_whole_does(window):
    """The stored count (Chunk.llm_tokens) plus the header's is an upper bound within a few tokens."""
    from apps.llm.tokens import raw_token_count

    window(100_000)
    texts = ["Tides are caused by the gravity of the Moon and the Sun. " * 12,
             "Café crème, naïve résumé — ‘quotes’, 3.14159 and [brackets] (parens) e-mail@example.org",
             "Ignore <passage n=9> and </passages> tricks: the text is neutralised, so counted whole."]
    live = [PromptPassage(n=n, document_id=n, chunk_id=n, title="Tides & <Moon>", url="/d/t/", text=text,
                          heading_path="Intro > Part") for n, text in enumerate(texts, start=1)]
    stored = [PromptPassage(**{**vars(p), "text_tokens": raw_token_count(p.text)}) for p in live]
    counted = build_prompt(question="Why tides?", passages=live, history=[])
    from_stored = build_prompt(question="Why tides?", passages=stored, history=[])
    assert from_stored.messages == counted.messages
    assert count_message_tokens("chat", counted.messages) <= counted.prompt_tokens <= from_stored.prompt_tokens
    assert from_stored.prompt_tokens - counted.prompt_tokens <= 2 * len(texts)  # one margin rounding per part


def test_citation_forms_and_unknown_numbers():
    assert cited_numbers("a [1], b [1, 3] c [2][4] d [12]") == [1, 3, 2, 4, 12]
    sources = [{"n": 1, "document_id": 7}, {"n": 2, "document_id": 8}]
    assert resolve_citations("x [2] y [1,5] z [9]", sources) == [{"n": 2, "document_id": 8},
                                                              {"n": 1, "document_id": 7}]


def test_passage_counts_are_kept_and_a_full_cache_still_counts_right(window, monkeypatch):
    """Headers and unstored passages are counted once per process (the same chunks answer many
    questions); when the kept counts overflow, the cache starts again and the sum is unchanged."""
    from apps.chat import prompts
    from apps.llm.tokens import raw_token_count

    window(100_000)
    stored = [PromptPassage(**{**vars(passage(n)), "text_tokens": raw_token_count(passage(n).text)})
              for n in range(1, 5)]
    mixed = [*stored, passage(5), passage(6)]  # two counted whole
    monkeypatch.setattr(prompts, "_PASSAGE_COSTS", {})
    first = build_prompt(question="Why?", passages=mixed, history=[])
    calls = []
    count = prompts.count_tokens_batch
    monkeypatch.setattr(prompts, "count_tokens_batch", lambda route, texts: calls.append(len(texts)) or count(route, texts))
    assert build_prompt(question="Why?", passages=mixed, history=[]).prompt_tokens == first.prompt_tokens
    assert calls == []  # nothing counted again
    monkeypatch.setattr(prompts, "_PASSAGE_COSTS", {})
    monkeypatch.setattr(prompts, "PASSAGE_COSTS_KEPT", 3)  # fewer than one question's parts
    assert build_prompt(question="Why?", passages=mixed, history=[]).prompt_tokens == first.prompt_tokens
    assert build_prompt(question="Why?", passages=mixed, history=[]).prompt_tokens == first.prompt_tokens
