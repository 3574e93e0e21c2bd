"""Shared fixtures: a real Celery worker process, a throwaway Redis server, and
pytest-playwright pointed at Debian's chromium. Nothing here mocks our own
database or queue."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings

from apps.core.worker_process import WorkerProcess as CoreWorkerProcess

BASE_DIR = Path(__file__).resolve().parent.parent
CHROMIUM_PATHS = ["/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"]
# pytest-playwright's sync API runs an event loop in the test thread; ORM calls
# made by browser tests for setup are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, output: Callable[[], str], timeout: float = 60) -> None:
    """Until ``url``/healthz answers 200; if ``proc`` exits or ``timeout`` passes first, kill it and
    raise with the end of its ``output()``."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(output()[-3000:])
        time.sleep(0.05)


# --- the suite runs on its own database, or not at all ----------------------------------------
# Django creates the test database through a connection to the server's "postgres" database. If
# that connection fails (the server still starting, or a role that may not connect there), Django
# 5.2 falls back to the database DATABASE_URL names, through a wrapper with the same alias: with
# the connection pool on (config.settings.base.DB_POOL), that wrapper's pool is kept as the
# alias's pool, so every later connection, the test database's migrate and every transactional
# test's closing TRUNCATE included, goes to the development (or any external) database. It
# happened here once, PostgreSQL coming up a second after pytest started: the development
# database was emptied. Two guards: the "postgres" database must answer before the test database
# is created, and the suite stops before any test unless its connections are on the test database.
MAINTENANCE_DB_WAIT_S = 30.0


def maintenance_database_error(settings_dict: dict, *, wait_s: float = MAINTENANCE_DB_WAIT_S) -> str | None:
    """None once the server's "postgres" database answers (trying for ``wait_s``), else why not."""
    import psycopg

    from apps.core.db import database_url

    url = database_url({**settings_dict, "NAME": "postgres"})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return None
        except psycopg.Error as exc:
            if time.monotonic() >= deadline:
                return f"{type(exc).__name__}: {exc}".strip()
        time.sleep(0.5)


def connected_database() -> str:
    """The database the default connection (through its pool) is really on."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        return cursor.fetchone()[0]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    from django.db import connection

    error = maintenance_database_error(connection.settings_dict)
    if error is not None:
        pytest.exit(f"The PostgreSQL server's 'postgres' database did not answer ({error}); not creating the test "
                    f"database through {connection.settings_dict['NAME']!r} instead (Django's fallback would then "
                    "migrate and flush that database).", returncode=3)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    from django.db import connection

    with django_db_blocker.unblock():
        actual, expected = connected_database(), connection.settings_dict["NAME"]
    if actual != expected:
        connection.close_pool()
        pytest.exit(f"The test connections are on the database {actual!r}, not the test database {expected!r}: "
                    "stopping before any test could flush it.", returncode=3)


@pytest.fixture(autouse=True)
def _redis_not_marked_down():
    """A test that points this process at a Redis that is down marks Redis down for the process
    (apps.core.degraded): the next tests, on the real one, must not inherit that."""
    yield
    from apps.core import degraded

    degraded.reset()


def test_database_url() -> str:
    """URL of the pytest-django test database, for child processes."""
    from django.db import connection

    from apps.core.db import database_url

    return database_url(connection.settings_dict)


def child_env(**extra) -> dict:
    """Environment for a child process that must see the same test DB, queue and cache."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=test_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_TASK_DEFAULT_QUEUE=settings.CELERY_TASK_DEFAULT_QUEUE,
        QUIRE_TEST_RUN_ID=settings.CELERY_TASK_DEFAULT_QUEUE.removeprefix("quire-test-"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess(CoreWorkerProcess):
    """A real `celery worker` subprocess consuming this run's queue and test database."""

    def __init__(self, concurrency: int = 1, extra_env: dict | None = None, queue: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        super().__init__(queue=queue or settings.CELERY_TASK_DEFAULT_QUEUE, env=child_env(**(extra_env or {})),
                         name="test-worker", concurrency=concurrency, extra_args=extra_args)

    def start(self, timeout: float = 90) -> WorkerProcess:
        super().start(timeout=timeout)
        return self


_session_worker: list[WorkerProcess] = []  # the celery_worker fixture's, once a test asked for it


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """One real worker for the session, on this run's queue and test database."""
    with django_db_blocker.unblock():
        worker = WorkerProcess().start()
    _session_worker.append(worker)
    yield worker
    _session_worker.clear()
    worker.stop()


def _transactional(request) -> bool:
    marker = request.node.get_closest_marker("django_db")
    return bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames))


@pytest.fixture(autouse=True)
def _async_statements_see_the_tests_transaction(request):
    """A test inside a transaction (not transactional) has rows no other connection sees: the
    statements async code runs (apps.core.adb) go through Django's connection there, as
    DB_ASYNC_POOL = None does; transactional tests and servers in subprocesses use the pool."""
    in_a_transaction = request.node.get_closest_marker("django_db") is not None or "db" in request.fixturenames
    if _transactional(request) or not in_a_transaction:
        yield
        return
    settings = request.getfixturevalue("settings")
    settings.DB_ASYNC_POOL = None
    yield


@pytest.fixture(autouse=True)
def _queued_tasks_done_before_the_flush(request):
    """A transactional test ends by emptying every table (TRUNCATE). Documents it saved queued
    their embedding, and once a test has started the session's worker, that worker runs
    those tasks meanwhile: a task still writing chunks deadlocks with the TRUNCATE. So wait
    until the worker has worked through what the test queued (its one process runs tasks in
    order: a ping answered means what was queued before it is done) before that teardown."""
    if not _transactional(request):
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up before us, so its flush runs after our wait
    yield
    worker = _session_worker[0] if _session_worker else None
    if worker is None or worker.proc is None or worker.proc.poll() is not None:
        return
    from config.celery_app import app

    for _ in range(3):  # a task may queue another (a batch, an enrichment)
        try:
            app.send_task("core.ping", args=["settled"], queue=settings.CELERY_TASK_DEFAULT_QUEUE).get(timeout=60)
        except Exception:  # a stuck worker fails its own tests; the flush is tried anyway
            return
        with app.connection_for_read() as conn:
            if not conn.default_channel.client.llen(settings.CELERY_TASK_DEFAULT_QUEUE):
                return


@pytest.fixture
def worker_factory(django_db_setup, django_db_blocker):
    """Start (and always stop) extra workers, e.g. to kill one mid-task."""
    started: list[WorkerProcess] = []

    def start(**kwargs) -> WorkerProcess:
        with django_db_blocker.unblock():
            worker = WorkerProcess(**kwargs).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A throwaway real redis-server on a free port, stopped at the end."""
    from apps.core import devservices

    port = free_port()
    url = devservices.start_redis(port=port, data_dir=tmp_path / "redis")
    yield SimpleNamespace(port=port, url=url, stop=lambda: devservices.stop_redis(port, tmp_path / "redis"))
    devservices.stop_redis(port, tmp_path / "redis")


def chromium_path() -> str | None:
    for candidate in CHROMIUM_PATHS:
        if Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    path = chromium_path()
    if path is None:
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    return {
        **browser_type_launch_args,
        "executable_path": path,
        "args": ["--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    }


@pytest.fixture(scope="session")
def _fake_upstream_server():
    from apps.llm.testing.fake_upstream import FakeUpstream

    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream(_fake_upstream_server):
    """A real OpenAI/Anthropic-compatible server on 127.0.0.1, reset for each test.

    Point a provider at it with ``apps.llm.testing.openai_provider(fake_upstream)``;
    make it fail with ``fake_upstream.configure(fail="500")`` (see its docstring);
    ``fake_upstream.calls()`` counts chat completion requests. The proxy's Redis
    state of this run (breakers, cache, spend, ledger queue) starts empty.
    """
    from apps.llm.testing import reset_proxy_state

    reset_proxy_state()
    yield _fake_upstream_server.reset()
    _fake_upstream_server.reset()


def pytest_collection_modifyitems(config, items):
    """Run browser tests last.

    pytest-playwright's sync API keeps an event loop running in the main thread
    for the rest of the session, after which ``async_to_sync`` (used by async
    Django code under test) refuses to run in that thread.
    """
    browser, other = [], []
    for item in items:
        (browser if "page" in getattr(item, "fixturenames", ()) else other).append(item)
    items[:] = other + browser
