"""A real ``celery worker`` subprocess: started, pinged until it answers,
stopped or killed as a process group. Used by the test suite's worker fixtures
and by benchmarks that run the pipeline end to end (``bench ingest``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent


class WorkerProcess:
    def __init__(self, *, queue: str, env: dict, name: str = "worker", concurrency: int = 1,
                 loglevel: str = "WARNING", broker_url: str | None = None, pool: str = "prefork",
                 extra_args: tuple[str, ...] = ()):
        self.queue, self.env, self.name, self.pool, self.extra_args = queue, env, name, pool, tuple(extra_args)
        self.concurrency, self.loglevel, self.broker_url = concurrency, loglevel, broker_url
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> float:
        """Start the worker and wait until it answers a ping task; returns seconds taken."""
        from config.celery_app import app

        started = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker",
                 "--loglevel", self.loglevel, "--pool", self.pool, "--concurrency", str(self.concurrency),
                 "-Q", self.queue, "-n", f"{self.name}-{os.getpid()}-{time.time_ns()}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", *self.extra_args],
                cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        with app.connection_for_write(self.broker_url) as conn:
            result = app.send_task("core.ping", args=["ready"], queue=self.queue, connection=conn)
        try:
            result.get(timeout=timeout)
        except Exception as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {self.log()[-3000:]}") from exc
        return time.perf_counter() - started

    def kill(self) -> None:
        """kill -9 the whole worker (main process and its pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM); kill if it does not finish in time."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
