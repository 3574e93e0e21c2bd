from celery import shared_task


@shared_task(name="core.ping")
def ping(value: str) -> dict:
    """Round-trip probe: proves broker, worker and result backend work together."""
    import os

    return {"pong": value, "worker_pid": os.getpid()}
