"""`bench embeddings` end to end, small: a real uvicorn on the test database (the testing
embedding backend), the figures printed as the last JSON line, every call in the ledger."""

import json

import pytest
from django.core.management import call_command

from tests.conftest import child_env


@pytest.mark.django_db(transaction=True)
def test_bench_embeddings_reports_latency_throughput_and_a_complete_ledger(capsys, monkeypatch):
    for name, value in child_env().items():  # the server it starts must use this run's database
        monkeypatch.setenv(name, value)
    call_command("bench", "embeddings", "--queries", "10", "--batch", "8", "--batches", "2", "--during", "5")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "embeddings" and result["model"] == "testing/hashed-bag-of-words"
    assert result["query_bare_model_p50_ms"] > 0 and result["query_via_api_p50_ms"] > 0
    assert result["batch_texts"] == 8 and result["batch_texts_per_s"] > 0 and result["batch_tokens_per_text"] > 50
    assert result["query_during_batches_p50_ms"] > 0
    assert result["ledger_rows"] >= result["api_calls"] == 20 + 10 + 2 + 5 and result["ledger_errors"] == 0
