"""Load generator for ``manage.py bench sse``: a separate process (no Django)
that opens chat streams with aiohttp and times every event.

    python -m apps.chat.sse_load '<json spec>'

Modes (``spec["mode"]``):

* ``held``: open ``len(urls)`` streams, wait until every one has its first
  token, print ``HOLDING`` (the bench samples server memory then), keep them
  for ``hold_s`` seconds, then close them all. Per stream: was it still open
  at the end, any error, the largest gap between tokens inside the window.
* ``throughput``: run the streams to completion; token events per second and
  the gaps between consecutive events.
* ``ttft``: one request at a time, first directly to the upstream, then
  through the chat endpoint: time to the first token of each.

The last line printed is the JSON result.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import aiohttp

TOKEN = b"event: token"


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Stream:
    __slots__ = ("index", "sent", "meta_at", "tokens", "error", "done", "closed_at", "done_data")

    def __init__(self, index: int):
        self.index = index
        self.sent = self.meta_at = self.closed_at = None
        self.tokens: list[float] = []
        self.error: str | None = None
        self.done = False
        self.done_data: dict | None = None


async def _read(session: aiohttp.ClientSession, spec: dict, url: str, question: str, stream: Stream,
                stop: asyncio.Event | None) -> None:
    stream.sent = time.perf_counter()
    try:
        async with session.post(url, json={"question": question}, headers=spec["headers"]) as response:
            if response.status != 200:
                stream.error = f"HTTP {response.status}: {(await response.text())[:200]}"
                return
            buffer = b""
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                buffer += chunk
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    if block.startswith(TOKEN):
                        stream.tokens.append(now)
                    elif block.startswith(b"event: meta"):
                        stream.meta_at = now
                    elif block.startswith(b"event: done"):
                        stream.done = True
                        stream.done_data = json.loads(block.split(b"data: ", 1)[1])
                    elif block.startswith(b"event: error"):
                        stream.error = block.decode(errors="replace")[:300]
                if stop is not None and stop.is_set():
                    break
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}"
    finally:
        stream.closed_at = time.perf_counter()


def _session(spec: dict) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(base_url=spec["base_url"], connector=connector, cookies=spec.get("cookies"),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))


async def _report_half_open(first_half: list[Stream], spec: dict) -> None:
    """Pause the ramp once the first half of the streams are open, print ``HALF <open>``
    and hold still for ``half_pause_s`` while the bench samples the worker's memory: the
    memory per stream is then also measured as the growth from half to all streams, which
    leaves out what the worker allocates once (pools, allocator arenas) whatever it serves."""
    deadline = time.perf_counter() + spec.get("open_timeout_s", 180)
    while time.perf_counter() < deadline and not all(s.tokens or s.error or s.closed_at for s in first_half):
        await asyncio.sleep(0.2)
    open_now = sum(1 for s in first_half if s.closed_at is None and s.meta_at is not None)
    print(f"HALF {open_now}", flush=True)
    await asyncio.sleep(spec.get("half_pause_s", 4.0))


async def held(spec: dict) -> dict:
    urls, hold_s, interval = spec["urls"], spec["hold_s"], spec["interval"]
    streams = [Stream(i) for i in range(len(urls))]
    stop = asyncio.Event()
    async with _session(spec) as session:
        tasks = []
        half = len(urls) // 2
        for i, url in enumerate(urls):
            if i == half and half:
                await _report_half_open(streams[:half], spec)
            tasks.append(asyncio.create_task(_read(session, spec, url, f"{spec['question']} #{i}", streams[i], stop)))
            if spec.get("ramp_per_s"):
                await asyncio.sleep(1 / spec["ramp_per_s"])
        ramp_started = streams[0].sent
        deadline = time.perf_counter() + spec.get("open_timeout_s", 180)
        while time.perf_counter() < deadline:
            if all(s.tokens or s.error or s.closed_at for s in streams):
                break
            await asyncio.sleep(0.2)
        opened = time.perf_counter()
        streams_open = sum(1 for s in streams if s.closed_at is None and s.meta_at is not None)
        print(f"HOLDING {streams_open} open, {sum(1 for s in streams if s.tokens and not s.error)} streaming",
              flush=True)
        await asyncio.sleep(hold_s)
        window_end = time.perf_counter()
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    held_count, gaps_max, errors, tokens_in_window = 0, [], {}, 0
    lost = {"no_first_token": 0, "error": 0, "ended_early": 0, "stalled": 0}
    for s in streams:
        in_window = [t for t in s.tokens if opened <= t <= window_end]
        tokens_in_window += len(in_window)
        if s.error:
            errors[s.error[:80]] = errors.get(s.error[:80], 0) + 1
            lost["error"] += 1
            continue
        if not s.tokens:
            lost["no_first_token"] += 1
            continue
        if s.done or (s.closed_at is not None and s.closed_at < window_end):
            lost["ended_early"] += 1
            continue
        marks = [opened, *in_window, window_end]
        worst = max(b - a for a, b in zip(marks, marks[1:], strict=False))
        gaps_max.append(worst)
        if worst <= 2 * interval:
            held_count += 1
        else:
            lost["stalled"] += 1
    return {
        "streams_requested": len(urls), "streams_held": held_count, "streams_open": streams_open,
        "open_s": round(opened - ramp_started, 2), "hold_s": round(window_end - opened, 2),
        "worst_gap_s": round(max(gaps_max), 3) if gaps_max else None,
        "tokens_in_window": tokens_in_window, "errors": errors, "not_held": lost,
    }


async def throughput(spec: dict) -> dict:
    urls = spec["urls"]
    streams = [Stream(i) for i in range(len(urls))]
    async with _session(spec) as session:
        await asyncio.gather(*(_read(session, spec, url, f"{spec['question']} #{i}", streams[i], None)
                               for i, url in enumerate(urls)))
    all_tokens = sorted(t for s in streams for t in s.tokens)
    gaps = sorted(b - a for s in streams for a, b in zip(s.tokens, s.tokens[1:], strict=False))
    # Events per second while every stream is streaming (opening is serial on the
    # server, so the first and last streams overlap only in this window).
    live = [s for s in streams if len(s.tokens) > 1]
    window = (max(s.tokens[0] for s in live), min(s.tokens[-1] for s in live)) if live else (0.0, 0.0)
    span = window[1] - window[0]
    in_window = sum(1 for t in all_tokens if window[0] <= t <= window[1])
    def pct(p):
        return round(gaps[min(len(gaps) - 1, int(p / 100 * len(gaps)))] * 1000, 2) if gaps else None

    errors = {}
    for s in streams:
        if s.error:
            errors[s.error[:80]] = errors.get(s.error[:80], 0) + 1
    overall = (all_tokens[-1] - all_tokens[0]) if len(all_tokens) > 1 else 0.0
    return {"streams": len(urls), "completed": sum(s.done for s in streams), "events": len(all_tokens),
            "events_per_s": round(len(all_tokens) / overall, 1) if overall > 0 else None,
            "events_per_s_all_live": round(in_window / span, 1) if span > 0 else None, "window_s": round(span, 2),
            "gap_p50_ms": pct(50), "gap_p99_ms": pct(99), "gap_max_ms": round(gaps[-1] * 1000, 2) if gaps else None,
            "errors": errors}


async def ttft(spec: dict) -> dict:
    direct, chat, prepare, retrieval, upstream_ttft, beyond_retrieval = [], [], [], [], [], []
    cached = 0
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    async with _session(spec) as session, aiohttp.ClientSession() as upstream:
        for _ in range(spec["samples"]):
            start = time.perf_counter()
            async with upstream.post(spec["upstream_url"] + "/chat/completions", json=body) as response:
                async for line in response.content:
                    if b'"content": "' in line and b'"content": ""' not in line:
                        direct.append(time.perf_counter() - start)
                        break
                await response.read()
        questions = spec.get("questions")
        for i, url in enumerate(spec["urls"]):
            stream = Stream(i)
            # A file's questions in turn, each made unique (the proxy's response cache must not answer it).
            question = (f"{questions[i % len(questions)]} (run {spec['run_tag']} #{i})" if questions
                        else f"{spec['question']} #{i}")
            await _read(session, spec, url, question, stream, None)
            if stream.tokens and not stream.error:
                chat.append(stream.tokens[0] - stream.sent)
            if stream.done_data:
                prepare.append(stream.done_data.get("prepare_ms") or 0.0)
                retrieval.append(stream.done_data.get("retrieval_ms") or 0.0)
                if stream.tokens and not stream.error:  # this answer's first token, its retrieval left out
                    beyond_retrieval.append(stream.tokens[0] - stream.sent - retrieval[-1] / 1000)
                upstream_ttft.append(stream.done_data.get("upstream_ttft_ms") or 0.0)
                cached += bool(stream.done_data.get("cached"))
    return {"direct_s": direct, "chat_s": chat, "prepare_ms": prepare, "retrieval_ms": retrieval,
            "proxy_ttft_ms": upstream_ttft, "beyond_retrieval_s": beyond_retrieval,
            "cached": cached}


def main() -> None:
    spec = json.loads(sys.argv[1])
    spec["nofile"] = raise_nofile_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    runner = {"held": held, "throughput": throughput, "ttft": ttft}[spec["mode"]]
    result = asyncio.run(runner(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
