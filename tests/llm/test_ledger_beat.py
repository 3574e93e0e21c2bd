"""Rows queued by a process that then goes idle reach PostgreSQL via the beat task."""

import pytest
from django.conf import settings

from apps.llm import ledger
from apps.llm.models import UsageRecord
from apps.llm.services import ChatRequest
from apps.llm.tasks import flush_ledger
from apps.llm.testing import collect, run
from tests.llm.conftest import question


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_periodic_flush_in_the_worker_writes_rows_an_idle_process_left_queued(proxy, celery_worker):
    run(collect, ChatRequest(route="chat", messages=question("first"), cache=False))
    run(collect, ChatRequest(route="chat", messages=question("second"), cache=False))
    assert ledger.pending_count() == 2
    assert UsageRecord.objects.count() == 0

    written = flush_ledger.apply_async(queue=settings.CELERY_TASK_DEFAULT_QUEUE).get(timeout=60)

    assert written == 2
    assert ledger.pending_count() == 0
    assert sorted(UsageRecord.objects.values_list("outcome", flat=True)) == ["ok", "ok"]


def test_beat_schedules_the_flush():
    entry = settings.CELERY_BEAT_SCHEDULE["flush-llm-ledger"]
    assert entry["task"] == flush_ledger.name
    assert entry["schedule"] > 0
