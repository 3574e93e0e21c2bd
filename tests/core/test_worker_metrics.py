"""Counters incremented inside prefork worker children are scrapeable."""

import time

import httpx
import pytest

from tests.conftest import free_port
from tests.factories.documents import DocumentFactory


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def embedded_ok(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('quire_documents_embedded_total{outcome="embedded"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_pipeline_metrics_from_worker_children_are_served_by_the_worker(worker_factory):
    port = free_port()
    worker_factory(extra_env={"CELERY_METRICS_PORT": str(port)})
    assert "quire_documents_embedded_total" not in scrape(port) or embedded_ok(scrape(port)) == 0

    DocumentFactory(title="Metrics from the worker", body="Glaciers carve valleys over millennia.")

    deadline = time.monotonic() + 60
    while embedded_ok(scrape(port)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert embedded_ok(scrape(port)) >= 1
    assert "quire_chunks_embedded_total" in scrape(port)
