import pytest
from django.conf import settings

from apps.core.tasks import ping
from config.celery_app import app


def test_celery_is_configured_for_crash_safety():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_soft_time_limit < conf.task_time_limit


@pytest.mark.worker
def test_task_round_trip_through_real_redis_and_worker(celery_worker):
    result = ping.apply_async(args=["hello"], queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    payload = result.get(timeout=30)
    assert payload["pong"] == "hello"
    # executed in the worker's process, not ours
    assert payload["worker_pid"] != __import__("os").getpid()
