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


@signals.worker_process_init.connect
def _start_tracing(**_kwargs):
    """Traces from each pool child (prefork; solo runs in the worker itself), only when an OTLP
    endpoint is set: its own exporter thread, since a thread does not survive the fork. The
    parent only hands messages to children and sends no spans. See apps/core/tracing.py."""
    from django.conf import settings

    if settings.TRACING_ENABLED:
        from apps.core import tracing

        tracing.setup()


@signals.worker_init.connect
def _start_tracing_without_pool_children(sender=None, **_kwargs):
    """The threads pool (and gevent, eventlet) runs tasks in the worker process itself and sends
    no ``worker_process_init``: traces start here, before the pool does."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.solo import TaskPool as SoloPool

    if sender is not None and not issubclass(get_implementation(sender.pool_cls), (PreforkPool, SoloPool)):
        _start_tracing()


@signals.worker_ready.connect
def _serve_worker_metrics(**_kwargs):
    if WORKER_METRICS_PORT:
        worker_metrics.serve(WORKER_METRICS_PORT)


@signals.worker_process_shutdown.connect
def _child_metrics_done(pid=None, **_kwargs):
    if WORKER_METRICS_PORT and pid:
        worker_metrics.child_exited(pid)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_traces(**_kwargs):
    # Sent in the pool child as it leaves, by os._exit (no atexit), and in the worker itself
    # (where only a pool without children started traces): export the spans still queued.
    tracing = sys.modules.get("apps.core.tracing")  # imported only if this child started traces
    if tracing is not None:
        tracing.shutdown()


@signals.worker_shutdown.connect
def _drop_worker_metrics(**_kwargs):
    if WORKER_METRICS_PORT:
        worker_metrics.cleanup()
