"""Enrichment (issue 5, requirement 8): publishing a document without a summary asks
the `enrich` route (here: the fake OpenAI-compatible upstream on 127.0.0.1) for a
summary and tags; staff accept them in admin with one click."""

import json

import pytest
from django.urls import reverse

from apps.documents import services
from apps.documents.models import Document
from apps.documents.tasks import enrich_document
from apps.llm.models import UsageRecord
from apps.llm.testing import EXTRACTIVE, openai_provider
from config.celery_app import app
from tests.documents.conftest import with_result
from tests.factories.documents import StaffFactory

pytestmark = pytest.mark.django_db(transaction=True)
ANSWER = {"summary": "How Quire turns documents into searchable vectors.", "tags": ["Embeddings", "pipeline"]}


@pytest.fixture
def enrich_route(settings, fake_upstream):
    settings.DOCUMENT_ENRICHMENT = True
    settings.LLM_PROVIDERS = {"primary": openai_provider(fake_upstream), "extractive": EXTRACTIVE}
    settings.LLM_ROUTES = {**settings.LLM_ROUTES,
                           "enrich": {"providers": ["primary"], "max_tokens": 200, "context_window": 4096}}
    settings.LLM_CACHE_TTL = 0
    fake_upstream.configure(text=json.dumps(ANSWER))
    # tasks run in this process, so they see these settings and the fake upstream
    app.conf.task_always_eager = True
    yield fake_upstream
    app.conf.task_always_eager = False


def publish(**fields):
    return services.document_create(title="Embedding pipeline", body="Documents are chunked and embedded.",
                                    status=Document.Status.PUBLISHED, author=StaffFactory(), **fields)


def test_publishing_without_a_summary_stores_suggestions_once_and_records_the_call(enrich_route):
    document = publish()
    document.refresh_from_db()
    assert document.suggested_summary == ANSWER["summary"]
    assert document.suggested_tags == ["embeddings", "pipeline"]
    assert document.summary == ""  # nothing changes until staff accept
    assert enrich_route.calls() == 1
    prompt = enrich_route.requests[-1]["body"]["messages"][-1]["content"]
    assert prompt.startswith("<document>") and "Documents are chunked and embedded." in prompt
    assert UsageRecord.objects.filter(route="enrich", outcome="ok").count() == 1

    assert with_result(enrich_document, document.pk).get(timeout=60) == "skipped"  # idempotent
    document.save()
    assert enrich_route.calls() == 1


def test_documents_with_a_summary_or_drafts_are_not_enriched(enrich_route):
    publish(summary="Written by hand.")
    services.document_create(title="Draft", body="Not yet.")
    assert enrich_route.calls() == 0


def test_a_failing_route_is_retried_then_succeeds(enrich_route, settings):
    settings.LLM_RETRY = {**settings.LLM_RETRY, "attempts": 0}
    enrich_route.configure(fail="500", fail_count=2)
    document = publish()
    document.refresh_from_db()
    assert document.suggested_summary == ANSWER["summary"]
    assert enrich_route.calls() == 3


def test_an_answer_that_is_not_json_is_not_stored(enrich_route):
    enrich_route.configure(text="Sure! Here is a summary of the document.")
    document = publish()
    document.refresh_from_db()
    assert document.suggested_summary == "" and document.suggested_tags == []


def test_staff_accept_the_suggestions_with_one_click(enrich_route, client):
    document = publish(tags=["pipeline", "docs"])
    client.force_login(StaffFactory())
    change = client.get(reverse("admin:documents_document_change", args=[document.pk])).content.decode()
    accept_url = reverse("admin:documents_document_accept_suggestions", args=[document.pk])
    assert ANSWER["summary"] in change and f'formaction="{accept_url}"' in change

    response = client.post(accept_url, follow=True)
    assert "Suggested summary and tags accepted." in response.content.decode()
    document.refresh_from_db()
    assert document.summary == ANSWER["summary"]
    assert document.tags == ["pipeline", "docs", "embeddings"]
    assert document.suggested_summary == "" and document.suggested_tags == []
