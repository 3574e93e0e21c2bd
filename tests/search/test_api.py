"""GET /api/v1/search: same service as the pages, errors in the envelope."""

import pytest

from tests.factories.search import indexed_document

pytestmark = pytest.mark.django_db


def test_search_api_returns_scored_results_with_snippets_urls_and_facets(client):
    doc = indexed_document(title="Coral bleaching", body="Warm water makes coral expel algae.", tags=["ocean"])
    body = client.get("/api/v1/search", {"q": "coral bleaching", "mode": "hybrid", "limit": 5}).json()
    assert body["total"] == 1 and body["mode"] == "hybrid"
    hit = body["results"][0]
    assert hit["document_id"] == doc.pk and hit["url"] == f"/d/{doc.slug}/"
    assert "<mark>" in hit["snippet"] and hit["score"] > 0
    assert body["facets"] == [{"tag": "ocean", "count": 1}]


def test_search_api_filters_by_tags_and_paginates(client):
    for i in range(4):
        indexed_document(title=f"Reef {i}", body="Reef fish.", tags=["ocean"] + (["fish"] if i % 2 else []))
    body = client.get("/api/v1/search", {"q": "reef", "tags": "ocean,fish", "limit": 1, "offset": 1}).json()
    assert body["total"] == 2 and len(body["results"]) == 1
    assert set(body["results"][0]["tags"]) == {"ocean", "fish"}


@pytest.mark.parametrize("params,field", [
    ({}, "q"), ({"q": "x", "mode": "fuzzy"}, "mode"), ({"q": "x", "limit": 0}, "limit"),
    ({"q": "x", "limit": "lots"}, "limit"), ({"q": "x", "date_from": "tomorrow"}, "date_from"),
])
def test_search_api_rejects_bad_parameters_in_the_envelope(client, params, field):
    response = client.get("/api/v1/search", params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error" and field in error["details"]


@pytest.mark.parametrize("q", ["x" * 5000, '"', "-", "&|!", "\x00"])
def test_search_api_never_500s_on_odd_queries(client, q):
    response = client.get("/api/v1/search", {"q": q})
    assert response.status_code in (200, 400)


def test_search_is_in_the_openapi_schema_with_an_example(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/search"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"q", "mode", "tags", "limit", "offset"}
    assert "examples" in operation["responses"]["200"]["content"]["application/json"]


def test_search_metrics_are_exported(client):
    indexed_document(title="Metric", body="Counting queries.")
    client.get("/api/v1/search", {"q": "counting", "mode": "keyword"})
    client.get("/api/v1/search", {"q": "zzznothing", "mode": "keyword"})
    metrics = client.get("/metrics").content.decode()
    assert 'quire_search_queries_total{mode="keyword"}' in metrics
    assert 'quire_search_zero_results_total{mode="keyword"}' in metrics
    assert "quire_search_latency_seconds_bucket" in metrics
