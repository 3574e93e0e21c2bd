import os
import sys

from celery import Celery, signals

from apps.core import worker_metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Worker metrics (see apps/core/worker_metrics.py): multiprocess mode has to be
# chosen before prometheus_client is first imported, i.e. before Django loads.
_metrics_port = os.environ.get("CELERY_METRICS_PORT", "")
if _metrics_port and not _metrics_port.isdigit():
    raise SystemExit(f"Environment variable CELERY_METRICS_PORT is malformed: {_metrics_port!r}")
WORKER_METRICS_PORT = int(_metrics_port) if _metrics_port and "worker" in sys.argv else None
if WORKER_METRICS_PORT:
    worker_metrics.prepare()

app = Celery("quire")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_ready.connect
def _serve_worker_metrics(**_kwargs):
    if WORKER_METRICS_PORT:
        worker_metrics.serve(WORKER_METRICS_PORT)


@signals.worker_process_shutdown.connect
def _child_metrics_done(pid=None, **_kwargs):
    if WORKER_METRICS_PORT and pid:
        worker_metrics.child_exited(pid)


@signals.worker_shutdown.connect
def _drop_worker_metrics(**_kwargs):
    if WORKER_METRICS_PORT:
        worker_metrics.cleanup()
