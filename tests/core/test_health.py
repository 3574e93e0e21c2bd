import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_dependencies(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_real_postgres_pgvector_and_redis(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["failed"] == []
    assert body["checks"]["database"]["postgres"].startswith("18")
    assert body["checks"]["database"]["pgvector"].count(".") == 2  # e.g. 0.8.x
    assert body["checks"]["redis"]["redis"].startswith("6.")
    assert body["checks"]["broker"]["ok"] is True


def test_readyz_is_503_naming_redis_when_redis_goes_down(client, redis_server):
    with override_settings(REDIS_URL=redis_server.url):
        assert client.get("/readyz").status_code == 200
        redis_server.stop()
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "redis" in body["failed"]
    assert "database" not in body["failed"]
    assert "Connection" in body["checks"]["redis"]["error"]


def test_metrics_exposed_for_prometheus(client):
    client.get("/healthz")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_method_total" in response.content
