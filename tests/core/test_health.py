import pytest
from django.test import override_settings

from apps.llm.embeddings.testing import DeterministicBackend

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


def test_with_a_metrics_token_only_its_bearer_reads_the_metrics(client, settings):
    settings.METRICS_TOKEN = "s3cret-scrape-token"
    for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "s3cret-scrape-token"}):
        refused = client.get("/metrics", **headers)
        assert refused.status_code == 401 and refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert refused.json()["error"]["code"] == "not_authenticated"
        assert b"django_http" not in refused.content
    allowed = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
    assert allowed.status_code == 200 and b"django_http_requests_total_by_method_total" in allowed.content


def test_deploy_check_warns_while_metrics_are_open(settings):
    from django.core.checks import run_checks

    settings.METRICS_TOKEN = ""
    assert "quire.W001" in [m.id for m in run_checks(include_deployment_checks=True)]
    settings.METRICS_TOKEN = "set"
    assert "quire.W001" not in [m.id for m in run_checks(include_deployment_checks=True)]


class SlowLoadingBackend(DeterministicBackend):
    """Stands in for the local model: load() blocks until the test releases it."""

    released = None

    def load(self):
        type(self).released.wait(10)


def test_readyz_is_503_while_the_embedding_model_warms_up(client, settings):
    import threading

    from apps.llm.embeddings import WARM_UP_STATE, reset_embedding_backends, warm_up_in_background

    SlowLoadingBackend.released = threading.Event()
    settings.EMBEDDING_BACKENDS = {**settings.EMBEDDING_BACKENDS,
                                   "slow": {"BACKEND": f"{__name__}.SlowLoadingBackend", "OPTIONS": {}}}
    reset_embedding_backends()
    try:
        warm_up_in_background("slow")
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["failed"] == ["embedding_model"]
        assert body["checks"]["embedding_model"]["models"]["slow"] == "loading"

        SlowLoadingBackend.released.set()
        for _ in range(100):
            if WARM_UP_STATE.get("slow") != "loading":
                break
            threading.Event().wait(0.05)
        response = client.get("/readyz")
        assert response.status_code == 200, response.json()
        assert response.json()["checks"]["embedding_model"]["models"]["slow"] == "ready"
    finally:
        SlowLoadingBackend.released.set()
        WARM_UP_STATE.pop("slow", None)
        reset_embedding_backends()


def test_a_not_ready_answer_is_a_warning_naming_the_check_not_a_server_error(client):
    """Probes keep asking while a dependency is down: each answer is one warning, not an ERROR
    line from django.request (and a Sentry event)."""
    import logging

    from apps.core import health

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    def queue_down():
        raise ConnectionError("queue unreachable")

    root = logging.getLogger()
    handler = Collect(level=logging.WARNING)
    root.addHandler(handler)
    health.register_check("queue", queue_down)
    try:
        assert client.get("/readyz").status_code == 503
        assert client.get("/nonexistent-page-for-the-filter").status_code == 404  # other paths untouched
    finally:
        health.CHECKS.pop("queue")
        root.removeHandler(handler)
    assert not [r for r in records if r.name == "django.request" and r.levelno >= logging.ERROR]
    warnings = [r.msg for r in records if r.name == "quire.health"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "health.not_ready" and warnings[0]["failed"] == ["queue"]
    assert "queue unreachable" in warnings[0]["errors"]["queue"]
    assert [r for r in records if r.name == "django.request" and "nonexistent" in r.getMessage()]
