"""A real OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1, for tests and
benchmarks. It is never a provider outside tests.

Endpoints: ``POST /v1/chat/completions`` (stream and non-stream, usage in the
stream when ``stream_options.include_usage``), ``GET /v1/models``,
``POST /v1/embeddings`` (deterministic unit vectors), ``POST /v1/messages``
(Anthropic Messages, streaming events). ``POST /_fake/config`` and
``GET /_fake/stats`` control it over HTTP (for subprocess use).

Behaviour is set with :meth:`FakeUpstream.configure`:

* ``tokens`` (8) answer tokens, ``token_delay`` seconds between them, ``text``
  (answer text, split into word tokens; overrides ``tokens``), ``usage`` (True);
* ``fail``: ``None`` | ``"500"`` | ``"429"`` (with ``retry_after``) |
  ``"refuse"`` (listening socket closed, kept-alive connections cut) |
  ``"hang"`` (stream: headers then silence; non-stream: no answer) |
  ``"drop"`` (connection cut after ``fail_at`` tokens, default 2) |
  ``"malformed"`` (a non-JSON chunk after ``fail_at`` tokens, default 0) |
  ``"400"`` (invalid request) | ``"context"`` (400: prompt longer than the context window);
* ``fail_count``: fail only the next N requests, then behave (None = always).

Counters: ``counts[path]``, ``requests`` (path, time, body), ``disconnects``
(clients that went away mid-stream, with times).

Run in a thread (``FakeUpstream().start()``) or as a process::

    python -m apps.llm.testing.fake_upstream --port 8999
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import threading
import time
from collections import Counter

from aiohttp import web

DEFAULTS = {
    "tokens": 8, "token_delay": 0.0, "text": None, "usage": True, "fail": None, "fail_count": None,
    "retry_after": "1", "fail_at": None, "model": "fake-model", "embedding_dim": 384,
}
FAIL_MODES = {None, "500", "429", "400", "context", "refuse", "hang", "drop", "malformed"}


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.config = dict(DEFAULTS)
        self.counts: Counter = Counter()
        self.requests: list[dict] = []
        self.disconnects: list[float] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._ready = threading.Event()

    # -- control ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL for OpenAI-compatible clients (ends in ``/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """Base URL for the Anthropic backend (it appends ``/v1/messages``)."""
        return f"http://{self.host}:{self.port}"

    def configure(self, **changes) -> FakeUpstream:
        unknown = set(changes) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fake upstream settings {sorted(unknown)}")
        if changes.get("fail", self.config["fail"]) not in FAIL_MODES:
            raise ValueError(f"fail must be one of {FAIL_MODES}")
        was_refusing = self.config["fail"] == "refuse"
        self.config.update(changes)
        refusing = self.config["fail"] == "refuse"
        if self.loop is not None and was_refusing != refusing:
            coro = self._stop_listening() if refusing else self._listen()
            try:
                on_own_loop = asyncio.get_running_loop() is self.loop
            except RuntimeError:
                on_own_loop = False
            if on_own_loop:  # asked over HTTP: cannot block our own loop
                self.loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)
        return self

    def reset(self) -> FakeUpstream:
        self.configure(**DEFAULTS)
        self.counts.clear()
        self.requests.clear()
        self.disconnects.clear()
        return self

    def calls(self, path: str = "/v1/chat/completions") -> int:
        return self.counts[path]

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop = None

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.serve())
        self._ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def serve(self) -> None:
        """Set up the app and listen (call on the loop that will serve it)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/_fake/config", self.control_config)
        app.router.add_get("/_fake/stats", self.control_stats)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        if self._site is not None:
            self._site._server.close()  # new connections are refused; live ones end below
            await self._site._server.wait_closed()
            self._runner._unreg_site(self._site)
            self._site = None

    # -- behaviour -------------------------------------------------------------------
    def _record(self, request: web.Request, body: dict | None) -> str | None:
        """Count the request and decide whether (and how) it fails."""
        self.counts[request.path] += 1
        self.requests.append({"path": request.path, "time": time.monotonic(), "body": body})
        fail = self.config["fail"]
        if fail is None:
            return None
        if self.config["fail_count"] is not None:
            if self.config["fail_count"] <= 0:
                return None
            self.config["fail_count"] -= 1
        return fail

    def _tokens(self) -> list[str]:
        if self.config["text"]:
            words = self.config["text"].split(" ")
            return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        return [f"tok{i} " for i in range(self.config["tokens"])]

    @staticmethod
    def _prompt_tokens(messages) -> int:
        return sum(len(str(m.get("content", "")).split()) + 4 for m in messages or [])

    def _error_response(self, fail: str, request: web.Request) -> web.StreamResponse | None:
        if fail == "500":
            return web.json_response({"error": {"message": "upstream exploded", "type": "server_error"}}, status=500)
        if fail == "429":
            return web.json_response({"error": {"message": "slow down", "type": "rate_limit_error"}}, status=429,
                                     headers={"Retry-After": str(self.config["retry_after"])})
        if fail == "400":
            return web.json_response({"error": {"message": "Invalid value for 'temperature'.",
                                                "type": "invalid_request_error"}}, status=400)
        if fail == "context":
            return web.json_response({"error": {"message": "This model's maximum context length is 8192 tokens.",
                                                "type": "invalid_request_error",
                                                "code": "context_length_exceeded"}}, status=400)
        if fail == "refuse" and request.transport is not None:
            request.transport.close()  # a kept-alive connection that was already open
        return None

    async def _begin(self, request: web.Request) -> tuple[dict, str | None, web.StreamResponse | None]:
        """Read and count the request; (body, failure mode, error response to send or None)."""
        body = await request.json()
        fail = self._record(request, body)
        error = self._error_response(fail, request)
        if error is None and fail == "refuse":
            raise ConnectionResetError
        return body, fail, error

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body, fail, error = await self._begin(request)
        if error is not None:
            return error
        tokens = self._tokens()
        model = body.get("model") or self.config["model"]
        prompt_tokens = self._prompt_tokens(body.get("messages"))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                 "total_tokens": prompt_tokens + len(tokens)}
        if not body.get("stream"):
            if fail == "hang":
                await asyncio.sleep(3600)
            await self._delay(len(tokens))
            payload = {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                             "finish_reason": "stop"}],
            }
            if self.config["usage"]:
                payload["usage"] = usage
            return web.json_response(payload)

        def chunk(delta: dict, finish=None) -> bytes:
            data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            for token in tokens:
                yield chunk({"content": token})
            yield chunk({}, "stop")
            if self.config["usage"] and (body.get("stream_options") or {}).get("include_usage"):
                data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                        "choices": [], "usage": usage}
                yield b"data: " + json.dumps(data).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return await self._stream(request, events(), fail, skip=1)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic Messages API."""
        body, fail, error = await self._begin(request)
        if error is not None:
            return error
        tokens = self._tokens()
        model = body.get("model") or self.config["model"]
        prompt_tokens = self._prompt_tokens(body.get("messages")) + len(str(body.get("system", "")).split())
        if not body.get("stream"):
            if fail == "hang":
                await asyncio.sleep(3600)
            return web.json_response({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(tokens)}], "stop_reason": "end_turn",
                "usage": {"input_tokens": prompt_tokens, "output_tokens": len(tokens)},
            })

        def event(kind: str, data: dict) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        async def events():
            yield event("message_start", {"message": {"id": "msg_fake", "type": "message", "role": "assistant",
                                                      "model": model, "content": [],
                                                      "usage": {"input_tokens": prompt_tokens, "output_tokens": 1}}})
            yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield event("ping", {})
            for token in tokens:
                yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}})
            yield event("content_block_stop", {"index": 0})
            yield event("message_delta", {"delta": {"stop_reason": "end_turn"},
                                          "usage": {"output_tokens": len(tokens)}})
            yield event("message_stop", {})

        return await self._stream(request, events(), fail, skip=3)

    async def _delay(self, n: int) -> None:
        if self.config["token_delay"]:
            await asyncio.sleep(self.config["token_delay"] * n)

    async def _stream(self, request: web.Request, events, fail: str | None, *, skip: int) -> web.StreamResponse:
        """Write SSE ``events``; ``skip`` leading events carry no token."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if fail == "hang":
            await self._hold(request)
            return response
        fail_at = self.config["fail_at"]
        if fail_at is None:
            fail_at = 2 if fail == "drop" else 0
        delay = self.config["token_delay"]
        try:
            index = -skip
            async for data in events:
                if fail == "drop" and index == fail_at:
                    # Let the tokens already written reach the client first: aiohttp discards
                    # buffered bytes once it sees the broken body.
                    await asyncio.sleep(0.05)
                    request.transport.close()  # no terminating chunk: the client sees a broken body
                    return response
                if fail == "malformed" and index == fail_at:
                    await response.write(b'data: {"choices": [{"delta": {"content": "unterminated\n\n')
                    await response.write(b"data: not json at all\n\n")
                    await response.write_eof()
                    return response
                if delay and index >= 0:
                    await asyncio.sleep(delay)
                await response.write(data)
                index += 1
            await response.write_eof()
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            self.disconnects.append(time.monotonic())
            raise
        return response

    async def _hold(self, request: web.Request) -> None:
        """Say nothing until the client gives up."""
        try:
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.02)
        finally:
            self.disconnects.append(time.monotonic())

    async def models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.json_response({"object": "list", "data": [
            {"id": self.config["model"], "object": "model", "created": 0, "owned_by": "fake-upstream"}]})

    async def embeddings(self, request: web.Request) -> web.Response:
        body, _, error = await self._begin(request)
        if error is not None:
            return error
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        dim = int(body.get("dimensions") or self.config["embedding_dim"])
        as_base64 = body.get("encoding_format") == "base64"  # float32 bytes, little-endian, as OpenAI's
        data = [{"object": "embedding", "index": i,
                 "embedding": _base64_floats(vector) if as_base64 else vector}
                for i, vector in enumerate(deterministic_vector(text, dim) for text in inputs)]
        tokens = sum(len(str(t).split()) for t in inputs)
        return web.json_response({"object": "list", "data": data, "model": body.get("model") or "fake-embedding",
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def control_config(self, request: web.Request) -> web.Response:
        changes = await request.json()
        if changes.pop("reset", False):
            self.reset()
        try:
            self.configure(**changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.config)

    async def control_stats(self, request: web.Request) -> web.Response:
        return web.json_response({"counts": dict(self.counts), "disconnects": len(self.disconnects),
                                  "config": self.config})


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def deterministic_vector(text: str, dim: int = 384) -> list[float]:
    """A unit vector that depends only on ``text``."""
    rng = random.Random(hashlib.sha256(str(text).encode()).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    upstream = FakeUpstream(args.host, args.port)

    async def run() -> None:
        upstream.loop = asyncio.get_running_loop()
        await upstream.serve()
        print(f"fake upstream listening on {upstream.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
