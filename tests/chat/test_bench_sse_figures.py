"""bench sse's memory figures: the average over every open stream and the growth from half
the streams to all of them (what one more stream costs, leaving out one-off growth)."""

from apps.chat.benchmarks import _figures, bench_question

EMPTY_RUN = {"direct_s": [], "chat_s": [], "prepare_ms": [], "proxy_ttft_ms": []}
NO_THROUGHPUT = dict.fromkeys(("streams", "completed", "events_per_s", "events_per_s_all_live", "window_s",
                               "gap_p50_ms", "gap_p99_ms", "gap_max_ms", "errors"))


def test_memory_per_stream_average_and_from_half_to_all():
    held = {"streams_held": 2000, "streams_open": 2000}
    figures = _figures(2000, held, rss_before=100_000, rss_during=220_000, first_tokens=EMPTY_RUN,
                       fast=NO_THROUGHPUT, options={"upstream_pool_limit": 10}, nofile=1024,
                       half={"streams": 1000, "rss_kb": 150_000})
    assert figures["kb_per_stream"] == 60.0  # (220000 - 100000) / 2000
    assert figures["kb_per_stream_marginal"] == 70.0  # (220000 - 150000) / (2000 - 1000)
    assert figures["streams_open_at_half"] == 1000


def test_no_half_sample_no_marginal_figure():
    held = {"streams_held": 10, "streams_open": 10}
    figures = _figures(10, held, rss_before=1000, rss_during=1500, first_tokens=EMPTY_RUN, fast=NO_THROUGHPUT,
                       options={"upstream_pool_limit": 10}, nofile=1024, half={})
    assert figures["kb_per_stream"] == 50.0 and figures["kb_per_stream_marginal"] is None


def test_throughput_cpu_per_event_reaches_the_json():
    fast = {**NO_THROUGHPUT, "streams": 200, "completed": 200, "events_per_s": 7000.0, "worker_cpu_us_per_event": 61.234}
    figures = _figures(0, None, None, None, first_tokens=EMPTY_RUN, fast=fast,
                       options={"upstream_pool_limit": 10}, nofile=1024)
    assert figures["throughput_worker_cpu_us_per_event"] == 61.23 and figures["kb_per_stream"] is None


def test_every_run_asks_new_questions_and_counts_cache_hits():
    # Repeated questions would be answered from the proxy's cache: the TTFT would time a cache hit.
    assert bench_question() != bench_question()
    first_tokens = {**EMPTY_RUN, "direct_s": [0.0002], "chat_s": [0.006, 0.007], "cached": 2}
    figures = _figures(0, None, None, None, first_tokens=first_tokens, fast=NO_THROUGHPUT,
                       options={"upstream_pool_limit": 10}, nofile=1024)
    assert figures["ttft_cached_answers"] == 2


def test_added_ttft_beyond_retrieval_leaves_each_answers_retrieval_out():
    # Three answers: first tokens at 6, 9 and 12 ms, of which 2, 4 and 5 ms were retrieval; the upstream alone 0.5 ms.
    first_tokens = {**EMPTY_RUN, "direct_s": [0.0005], "chat_s": [0.006, 0.009, 0.012],
                    "beyond_retrieval_s": [0.004, 0.005, 0.007]}
    figures = _figures(0, None, None, None, first_tokens=first_tokens, fast=NO_THROUGHPUT,
                       options={"upstream_pool_limit": 10}, nofile=1024)
    assert figures["ttft_added_p50_ms"] == 8.5  # median 9, less 0.5
    assert figures["ttft_added_beyond_retrieval_p50_ms"] == 4.5  # median 5, less 0.5
    assert _figures(0, None, None, None, first_tokens=EMPTY_RUN, fast=NO_THROUGHPUT,
                    options={"upstream_pool_limit": 10}, nofile=1024)["ttft_added_beyond_retrieval_p50_ms"] is None


def test_run_c_can_ask_a_file_of_questions_in_turn(tmp_path):
    import pytest

    from apps.chat.benchmarks import ttft_questions

    beir = tmp_path / "queries.jsonl"
    beir.write_text('{"_id": "1", "text": "Aspirin lowers fever."}\n\n{"_id": "3", "text": "Tides follow the moon."}\n')
    plain = tmp_path / "questions.txt"
    plain.write_text("What is Quire?\nHow does search rank?\n")
    assert ttft_questions(str(beir)) == ["Aspirin lowers fever.", "Tides follow the moon."]
    assert ttft_questions(str(plain)) == ["What is Quire?", "How does search rank?"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no question"):
        ttft_questions(str(tmp_path / "empty.txt"))
    figures = _figures(0, None, None, None, first_tokens=EMPTY_RUN, fast=NO_THROUGHPUT, nofile=1024,
                       options={"upstream_pool_limit": 10, "ttft_questions": str(beir)})
    assert figures["ttft_questions"] == "queries.jsonl"
    assert _figures(0, None, None, None, first_tokens=EMPTY_RUN, fast=NO_THROUGHPUT, nofile=1024,
                    options={"upstream_pool_limit": 10})["ttft_questions"] == "fixed"


def test_the_figures_say_who_embedded_the_questions(settings):
    settings.EMBEDDING_PROVIDER = "local"
    settings.EMBEDDING_BACKENDS = {"default": {"BACKEND": "apps.llm.embeddings.onnx.OnnxBackend", "OPTIONS": {}}}
    run = dict(first_tokens=EMPTY_RUN, fast=NO_THROUGHPUT, nofile=1024)
    assert _figures(0, None, None, None, options={"upstream_pool_limit": 10}, **run)["query_embeddings"] == "upstream"
    local = _figures(0, None, None, None, options={"upstream_pool_limit": 10, "query_embeddings": "local"}, **run)
    assert local["query_embeddings"] == "local:OnnxBackend"
