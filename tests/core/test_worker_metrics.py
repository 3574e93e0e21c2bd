"""Counters incremented inside prefork worker children are scrapeable."""

import time

import httpx
import pytest
from django.conf import settings

from apps.documents.models import Document
from apps.documents.tasks import embed_document
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
    """The worker consumes a queue of its own: the session's worker, if an earlier test started
    it, would otherwise answer this one's readiness ping (before its metrics server is up) or
    take the embedding task (whose counters then land in a worker serving no metrics)."""
    port, queue = free_port(), f"{settings.CELERY_TASK_DEFAULT_QUEUE}-metrics"
    worker_factory(extra_env={"CELERY_METRICS_PORT": str(port)}, queue=queue)
    assert "quire_documents_embedded_total" not in scrape(port) or embedded_ok(scrape(port)) == 0

    # Saved without signals (nothing queued on the shared queue), then embedded on this worker's.
    (document,) = Document.objects.bulk_create([DocumentFactory.build(title="Metrics from the worker",
                                                                      body="Glaciers carve valleys over millennia.")])
    embed_document.apply_async(args=[document.pk], queue=queue)

    deadline = time.monotonic() + 60
    while embedded_ok(scrape(port)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert embedded_ok(scrape(port)) >= 1
    assert "quire_chunks_embedded_total" in scrape(port)
