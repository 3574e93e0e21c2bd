"""Each LLM call through the proxy is one span (apps.core.spans), with OpenTelemetry's GenAI
attributes and the ledger row's id, under the span that was current when the call started:
here the real SDK's tracer provider with an in-memory exporter, the upstreams real HTTP servers."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from apps.core import spans
from apps.core.tracing import SpanRecorder
from apps.llm import ledger
from apps.llm.models import UsageRecord
from apps.llm.services import ChatRequest
from apps.llm.testing import collect, run
from tests.llm.conftest import question

pytestmark = pytest.mark.django_db


@pytest.fixture
def exported(monkeypatch):
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(spans, "recorder", SpanRecorder(provider))
    tracer = provider.get_tracer("test")

    def ask(**kwargs):
        """The call inside a request's span; returns (events, the call's spans, the request's span)."""
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as request_span:
            events = run(collect, ChatRequest(route="chat", messages=question(), **{"cache": False, **kwargs}))
        calls = [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "quire"]
        exporter.clear()
        return events, calls, request_span

    return ask


def test_a_call_is_one_span_with_its_model_tokens_cost_and_ledger_row(proxy, exported):
    events, (call,), request_span = exported()
    done = events[-1]
    assert done.type == "done" and done.provider == "primary"
    assert call.name == "chat fake-model" and call.kind == SpanKind.INTERNAL
    assert call.parent.span_id == request_span.get_span_context().span_id
    assert call.status.status_code == StatusCode.UNSET
    attributes = dict(call.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "fake-model"
    assert attributes["gen_ai.usage.input_tokens"] == done.usage.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == done.usage.completion_tokens > 0
    assert attributes["quire.llm.cost_usd"] == float(done.cost) > 0
    assert attributes["quire.llm.call_id"] == done.usage_record_id
    assert (attributes["quire.llm.route"], attributes["quire.llm.provider"], attributes["quire.llm.outcome"]) == (
        "chat", "primary", "ok")
    assert attributes["quire.llm.cache_hit"] is False and attributes["quire.llm.fallbacks"] == 0
    assert 0 < attributes["quire.llm.ttft_ms"] <= done.latency_ms
    assert call.end_time - call.start_time == pytest.approx(done.latency_ms * 1e6, rel=0.01)
    assert not any("aspirin" in str(value) for value in attributes.values())  # no prompt, no answer
    ledger.flush()
    assert UsageRecord.objects.get(pk=attributes["quire.llm.call_id"]).completion_tokens == done.usage.completion_tokens


def test_a_fallback_is_one_span_naming_the_provider_that_answered(proxy, exported):
    proxy.primary.configure(fail="500")
    events, (call,), _ = exported()
    assert events[-1].provider == "secondary"
    assert call.name == "chat fake-claude" and call.attributes["gen_ai.provider.name"] == "anthropic"
    assert call.attributes["quire.llm.fallbacks"] == 1 and call.attributes["quire.llm.outcome"] == "ok"


def test_a_failed_call_is_an_error_span(proxy, exported):
    proxy.primary.configure(fail="drop", fail_at=2)  # two tokens, then the connection drops
    events, (call,), _ = exported()
    assert events[-1].type == "error" and events[-1].partial
    assert call.status.status_code == StatusCode.ERROR and call.attributes["quire.llm.outcome"] == "partial"
    assert call.attributes["gen_ai.usage.output_tokens"] > 0  # what was streamed is still counted

    proxy.primary.configure(fail="400")
    events, (call,), _ = exported()
    assert events[-1].type == "error" and call.status.status_code == StatusCode.ERROR
    assert "HTTP 400" in call.status.description and call.attributes["quire.llm.outcome"] == "error"


def test_a_cache_hit_is_a_span_that_cost_nothing(proxy, exported):
    exported(cache=True)
    events, (call,), _ = exported(cache=True)
    assert events[-1].cached and proxy.primary.calls() == 1
    assert call.attributes["quire.llm.cache_hit"] is True and call.attributes["quire.llm.cost_usd"] == 0.0


def test_without_traces_no_span_is_written(proxy, monkeypatch):
    monkeypatch.setattr(spans, "recorder", None)
    assert spans.parent() is None
    events = run(collect, ChatRequest(route="chat", messages=question(), cache=False))
    assert events[-1].type == "done"  # and nothing to write it to


def test_an_embeddings_call_is_a_span_too(monkeypatch):
    from apps.llm.services import aembed

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(spans, "recorder", SpanRecorder(provider))
    with provider.get_tracer("test").start_as_current_span("POST /v1/embeddings", kind=SpanKind.SERVER) as outer:
        result = run(aembed, alias="default", texts=["Glaciers carve valleys.", "Aspirin and tides."])
    (call,) = [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "quire"]
    assert call.name == "embeddings testing/hashed-bag-of-words"
    assert call.parent.span_id == outer.get_span_context().span_id
    attributes = dict(call.attributes)
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.usage.input_tokens"] == result.prompt_tokens > 0
    assert (attributes["quire.llm.route"], attributes["quire.llm.outcome"], attributes["quire.llm.inputs"]) == (
        "embeddings", "ok", 2)
    assert attributes["quire.llm.call_id"] == result.usage_record_id
    assert not any("spirin" in str(value) for value in attributes.values())  # no input text
