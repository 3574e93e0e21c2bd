"""Reading the chat's server-sent events in tests: in-process through Django's
ASGI request path (AsyncClient), or over real HTTP from a uvicorn subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from django.test import AsyncClient

from apps.llm.testing import run
from tests.conftest import wait_until_healthy

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def parse_sse(raw: bytes | str) -> list[tuple[str, dict | None]]:
    """``[(event, data), ...]``; comments come back as ``(":", None)``."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            events.append((":", None))
            continue
        kind, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
        events.append((kind, data))
    return events


def first(events, kind: str):
    return next(data for event, data in events if event == kind)


def ask(path: str, question: str | None, *, user=None, client: AsyncClient | None = None, body: str | None = None,
        headers: dict | None = None):
    """POST ``question`` (or the raw JSON ``body``) in-process, with ``headers`` (e.g. an API token's
    Authorization); returns ``(response, events)`` (events empty for JSON errors)."""

    async def go():
        nonlocal client
        client = client or AsyncClient()
        if user is not None:
            await client.aforce_login(user)
        response = await client.post(path, {"question": question} if body is None else body,
                                     content_type="application/json",
                                     headers={"accept": "text/event-stream", **(headers or {})})
        if not response.streaming:
            return response, []
        raw = b"".join([chunk async for chunk in response.streaming_content])
        return response, parse_sse(raw)

    if asyncio._get_running_loop() is not None:
        # pytest-playwright's sync API can leave its loop marked as running in this
        # thread after a browser test; then run in a thread of our own (its own DB
        # connection: only for transaction=True tests, which commit their data).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(run, go).result()
    return run(go)


class AppServer:
    """``uvicorn config.asgi:application`` in a subprocess against the test database."""

    def __init__(self, port: int, env: dict):
        self.port = port
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="chat-uvicorn-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> AppServer:
        log = open(self.log, "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.chat.asgi_static:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--lifespan", "off", "--no-access-log", "--log-level", "warning"],
            cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until_healthy(self.url, self.proc, self.log.read_text, timeout=timeout)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
