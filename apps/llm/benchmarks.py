"""``manage.py bench proxy``: what the inference proxy adds over calling the upstream directly.

Two real servers on loopback: the fake upstream (its own process, uvloop) and
Quire under uvicorn (one worker, uvloop + httptools) with the fake as its
``openai`` provider. The load generator (this process, aiohttp) alternates
direct and proxied requests over keep-alive connections so drift hits both.
Figures: non-streaming p50/p99 direct vs via proxy, streaming time to first
token, cache-hit latency, requests/s with concurrent clients, and whether
every proxied call reached the ledger.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from decimal import Decimal

from django.conf import settings

from apps.core.bench import percentile, print_table, register

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something short."}]


def _arguments(parser):
    parser.add_argument("--iterations", type=int, default=1000, help="sequential requests per measurement")
    parser.add_argument("--rps-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _wait_http(session, url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            async with session.get(url) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        except Exception:  # noqa: S110 - aiohttp connection errors while it boots
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _post(session, url, body, headers) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return time.perf_counter() - started


async def _ttft(session, url, body, headers) -> float:
    """Seconds until the first chunk carrying answer text."""
    started = time.perf_counter()
    first = None
    async with session.post(url, data=body, headers=headers) as response:
        async for line in response.content:
            if first is None and b'"content": "tok' in line.replace(b'"content":"', b'"content": "'):
                first = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    return first


def _ms(values: list[float], pct: float) -> float:
    return round(percentile([v * 1000 for v in values], pct), 3)


async def _measure(options, upstream_url: str, proxy_url: str, raw_key: str, budget_key: str) -> dict:
    import aiohttp

    n = options["iterations"]
    direct_url = f"{upstream_url}/v1/chat/completions"
    via_url = f"{proxy_url}/v1/chat/completions"
    direct_headers = {"Content-Type": "application/json", "Authorization": "Bearer upstream"}
    proxy_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {raw_key}"}
    budget_headers = {**proxy_headers, "Authorization": f"Bearer {budget_key}"}
    plain = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES})
    via_nocache = json.dumps({"model": "chat", "messages": MESSAGES, "cache": False})
    via_cached = json.dumps({"model": "chat", "messages": MESSAGES})
    direct_stream = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    via_stream = json.dumps({"model": "chat", "messages": MESSAGES, "stream": True, "cache": False})

    connector = aiohttp.TCPConnector(limit=options["concurrency"] + 4)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(200):  # warm-up: connection pools, first-use imports, JIT-less caches
            await _post(session, direct_url, plain, direct_headers)
            await _post(session, via_url, via_nocache, proxy_headers)
        await _post(session, via_url, via_cached, proxy_headers)  # fill the cache
        direct, via, via_budget, hits = [], [], [], []
        for _ in range(n):  # interleaved, so load from elsewhere on the machine hits every series alike
            direct.append(await _post(session, direct_url, plain, direct_headers))
            via.append(await _post(session, via_url, via_nocache, proxy_headers))
            via_budget.append(await _post(session, via_url, via_nocache, budget_headers))
            hits.append(await _post(session, via_url, via_cached, proxy_headers))
        ttft_direct, ttft_via = [], []
        for _ in range(max(n // 2, 50)):
            ttft_direct.append(await _ttft(session, f"{upstream_url}/v1/chat/completions", direct_stream,
                                           direct_headers))
            ttft_via.append(await _ttft(session, via_url, via_stream, proxy_headers))

        # The HTTP client of the backends: the same direct call with aiohttp and httpx
        # (the issue measured 1.6 vs 3.3 ms added when forwarding from a bare Django view).
        import httpx

        via_aiohttp, via_httpx = [], []
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                await client.post(direct_url, content=plain, headers=direct_headers)
            for _ in range(n):  # interleaved, same upstream, same moment
                via_aiohttp.append(await _post(session, direct_url, plain, direct_headers))
                started = time.perf_counter()
                (await client.post(direct_url, content=plain, headers=direct_headers)).read()
                via_httpx.append(time.perf_counter() - started)

        completed = 0
        stop_at = time.perf_counter() + options["rps_seconds"]

        async def client():
            nonlocal completed
            while time.perf_counter() < stop_at:
                await _post(session, via_url, via_nocache, proxy_headers)
                completed += 1

        rps_started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(options["concurrency"])))
        rps = completed / (time.perf_counter() - rps_started)

    # Every request that went through the proxy: warm-up, the three proxied series,
    # streamed calls, the cache fill, and the throughput phase.
    proxied_calls = 200 + 3 * n + len(ttft_via) + 1 + completed
    return {
        "direct_p50_ms": _ms(direct, 50), "direct_p99_ms": _ms(direct, 99),
        "proxy_p50_ms": _ms(via, 50), "proxy_p99_ms": _ms(via, 99),
        "added_p50_ms": round(_ms(via, 50) - _ms(direct, 50), 3),
        "added_p99_ms": round(_ms(via, 99) - _ms(direct, 99), 3),
        "added_p50_with_budget_ms": round(_ms(via_budget, 50) - _ms(direct, 50), 3),
        "ttft_direct_p50_ms": _ms(ttft_direct, 50), "ttft_proxy_p50_ms": _ms(ttft_via, 50),
        "ttft_added_p50_ms": round(_ms(ttft_via, 50) - _ms(ttft_direct, 50), 3),
        "cache_hit_p50_ms": _ms(hits, 50), "cache_hit_p99_ms": _ms(hits, 99),
        "rps": round(rps, 1), "rps_concurrency": options["concurrency"],
        "client_aiohttp_direct_p50_ms": _ms(via_aiohttp, 50), "client_httpx_direct_p50_ms": _ms(via_httpx, 50),
        "client_aiohttp_direct_p99_ms": _ms(via_aiohttp, 99), "client_httpx_direct_p99_ms": _ms(via_httpx, 99),
        "iterations": n, "proxied_calls": proxied_calls,
    }


@register("proxy", help="latency the LLM proxy adds over a direct upstream call, cache hits, requests/s",
          arguments=_arguments)
def bench_proxy(*, stdout, options):
    from django.contrib.auth import get_user_model

    from apps.llm.models import ApiKey, UsageRecord
    from apps.llm.services import api_key_create

    upstream_port, proxy_port = _free_port(), _free_port()
    upstream_url, proxy_url = f"http://127.0.0.1:{upstream_port}", f"http://127.0.0.1:{proxy_port}"
    user, _ = get_user_model().objects.get_or_create(username="bench-proxy")
    key, raw = api_key_create(name="bench proxy", user=user)
    budget_key, budget_raw = api_key_create(name="bench proxy (budget)", user=user,
                                            monthly_budget_usd=Decimal("100000"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", DEBUG="false", LOG_LEVEL="WARNING",
               LLM_OPENAI_BASE_URL=f"{upstream_url}/v1", LLM_OPENAI_API_KEY="upstream",
               LLM_OPENAI_MODEL="gpt-4o-mini")
    env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local"))
    upstream = _spawn(["-m", "apps.llm.testing.fake_upstream", "--port", str(upstream_port)], env)
    proxy = _spawn(["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(proxy_port),
                    "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--lifespan", "off",
                    "--no-access-log", "--log-level", "warning"], env)
    started_rows = UsageRecord.objects.filter(api_key__in=[key, budget_key]).count()
    load_before = os.getloadavg()[0]  # other work on the machine skews loopback latency; say how much there was
    try:
        async def run():
            import aiohttp

            async with aiohttp.ClientSession() as session:
                await _wait_http(session, f"{upstream_url}/v1/models", upstream)
                # /readyz, not /healthz: it answers 503 until the embedding model is loaded,
                # and requests served during that load (torch imports hold the GIL) stall.
                await _wait_http(session, f"{proxy_url}/readyz", proxy)
            return await _measure(options, upstream_url, proxy_url, raw, budget_raw)

        try:
            import uvloop

            figures = uvloop.run(run())
        except ImportError:  # pragma: no cover
            figures = asyncio.run(run())
        # The ledger is written in batches off the request path; give the last batch time to land.
        deadline = time.monotonic() + 15
        rows = 0
        while time.monotonic() < deadline:
            if not settings.LLM_LEDGER_FLUSH_INTERVAL:  # no in-process flusher: do what the beat task does
                from apps.llm import ledger

                ledger.flush()
            rows = UsageRecord.objects.filter(api_key__in=[key, budget_key]).count() - started_rows
            if rows >= figures["proxied_calls"]:
                break
            time.sleep(0.25)
        figures["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        figures["ledger_rows"] = rows
        figures["ledger_complete"] = rows == figures["proxied_calls"]
    finally:
        _stop(proxy, upstream)
        ApiKey.objects.filter(pk__in=[key.pk, budget_key.pk]).update(is_active=False)

    print_table(stdout, [
        ("non-stream direct", figures["direct_p50_ms"], figures["direct_p99_ms"]),
        ("non-stream via proxy", figures["proxy_p50_ms"], figures["proxy_p99_ms"]),
        ("added by proxy", figures["added_p50_ms"], figures["added_p99_ms"]),
        ("added, with a budget check", figures["added_p50_with_budget_ms"], ""),
        ("stream TTFT direct", figures["ttft_direct_p50_ms"], ""),
        ("stream TTFT via proxy", figures["ttft_proxy_p50_ms"], ""),
        ("cache hit", figures["cache_hit_p50_ms"], figures["cache_hit_p99_ms"]),
    ], ("measure", "p50 ms", "p99 ms"))
    stdout.write(f"requests/s on one worker ({figures['rps_concurrency']} clients): {figures['rps']}")
    stdout.write(f"direct call with aiohttp p50/p99 {figures['client_aiohttp_direct_p50_ms']}/"
                 f"{figures['client_aiohttp_direct_p99_ms']} ms, with httpx {figures['client_httpx_direct_p50_ms']}/"
                 f"{figures['client_httpx_direct_p99_ms']} ms")
    stdout.write(f"ledger rows written: {figures['ledger_rows']} of {figures['proxied_calls']} proxied calls")
    return figures


# --- bench embeddings ------------------------------------------------------------------------
def _embedding_arguments(parser):
    parser.add_argument("--queries", type=int, default=200, help="single queries timed, bare model and via /v1/")
    parser.add_argument("--batch", type=int, default=64, help="texts per batch request")
    parser.add_argument("--batches", type=int, default=8, help="batch requests timed")
    parser.add_argument("--during", type=int, default=60, help="single queries timed while batches run")


def _bench_texts() -> tuple[list[str], list[str]]:
    """(questions, passages of about 600 characters) from the demo documents shipped in the repository."""
    import re
    from pathlib import Path

    demo = sorted((Path(settings.BASE_DIR) / "apps" / "documents" / "demo").glob("*.md"))
    words = " ".join(re.sub(r"[#`*|>\[\]()_-]+", " ", path.read_text()) for path in demo).split()
    passages = [" ".join(words[i:i + 90]) for i in range(0, len(words) - 90, 45)]
    questions = [" ".join(words[i:i + 9]) + f"? ({i})" for i in range(0, len(words) - 9, 7)]
    return questions, passages


async def _measure_embeddings(options, url: str, raw_key: str, model: str, questions, passages) -> dict:
    import aiohttp

    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}

    def body(texts, **extra) -> str:
        return json.dumps({"model": model, "input": texts, **extra})

    batch = options["batch"]
    batches = [[passages[(i * batch + j) % len(passages)] for j in range(batch)] for i in range(options["batches"])]
    async with aiohttp.ClientSession() as session:
        for question in questions[:20]:  # warm-up
            await _post(session, url, body(question, input_type="query"), headers)
        singles = [await _post(session, url, body(q, input_type="query"), headers)
                   for q in questions[20:20 + options["queries"]]]
        timed = [await _post(session, url, body(texts), headers) for texts in batches]

        # Single queries while another caller's batches keep the model busy.
        busy = True

        async def batch_caller():
            i = 0
            while busy:
                await _post(session, url, body(batches[i % len(batches)]), headers)
                i += 1

        background = asyncio.ensure_future(batch_caller())
        await asyncio.sleep(1.0)
        during = []
        for question in questions[-options["during"]:]:
            during.append(await _post(session, url, body(question, input_type="query"), headers))
            await asyncio.sleep(0.05)
        busy = False
        await background
    texts_per_s = sum(len(texts) for texts in batches) / sum(timed)
    return {
        "query_via_api_p50_ms": _ms(singles, 50), "query_via_api_p95_ms": _ms(singles, 95),
        "batch_texts": batch, "batch_p50_ms": _ms(timed, 50), "batch_texts_per_s": round(texts_per_s, 1),
        "query_during_batches_p50_ms": _ms(during, 50), "query_during_batches_p95_ms": _ms(during, 95),
        "query_during_batches_max_ms": _ms(during, 100),
        "api_calls": 20 + len(singles) + len(timed) + len(during),  # the background batches are counted after
    }


@register("embeddings", help="POST /v1/embeddings with the local model: a query's latency against the bare "
                             "model, batch throughput, a query's wait while another caller's batches run",
          arguments=_embedding_arguments)
def bench_embeddings(*, stdout, options):
    from django.contrib.auth import get_user_model

    from apps.llm.embeddings import get_embedding_backend
    from apps.llm.models import ApiKey, UsageRecord
    from apps.llm.services import api_key_create

    questions, passages = _bench_texts()
    backend = get_embedding_backend()
    # The bare model in this process, on one thread as a web process runs it.
    if getattr(backend, "threads", "n/a") is None:
        backend.threads = 1
    for question in questions[:20]:
        backend._embed([question], kind="query")
    bare = []
    for question in questions[20:20 + options["queries"]]:
        started = time.perf_counter()
        backend._embed([question], kind="query")
        bare.append(time.perf_counter() - started)
    tokens_per_passage = sum(backend.count_tokens_batch(passages[:options["batch"]])) / min(options["batch"],
                                                                                            len(passages))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    user, _ = get_user_model().objects.get_or_create(username="bench-embeddings")
    key, raw = api_key_create(name="bench embeddings", user=user, requests_per_minute=0)
    env = dict(os.environ, PYTHONUNBUFFERED="1", DEBUG="false", LOG_LEVEL="WARNING")
    env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings.local"))
    server = _spawn(["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--lifespan", "off",
                     "--no-access-log", "--log-level", "warning"], env)
    load_before = os.getloadavg()[0]
    try:
        async def run():
            import aiohttp

            async with aiohttp.ClientSession() as session:
                await _wait_http(session, f"{url}/readyz", server)  # 503 until the model is loaded
            return await _measure_embeddings(options, f"{url}/v1/embeddings", raw, backend.model_id,
                                             questions, passages)

        figures = asyncio.run(run())
    finally:
        _stop(server)
        ApiKey.objects.filter(pk=key.pk).update(is_active=False)
    from apps.llm import ledger

    rows = UsageRecord.objects.filter(api_key=key, route="embeddings")
    deadline = time.monotonic() + 15  # rows reach Redis just after each response, the database in batches
    while rows.count() < figures["api_calls"] and time.monotonic() < deadline:
        ledger.flush()
        time.sleep(0.1)
    figures.update({
        "model": backend.model_id, "backend": type(backend).__name__, "query_bare_model_p50_ms": _ms(bare, 50),
        "query_added_p50_ms": round(figures["query_via_api_p50_ms"] - _ms(bare, 50), 3),
        "batch_tokens_per_text": round(tokens_per_passage, 1),
        "ledger_rows": rows.count(), "ledger_errors": rows.exclude(outcome="ok").count(),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })
    print_table(stdout, [
        (f"one query, bare model ({type(backend).__name__}, 1 thread)", figures["query_bare_model_p50_ms"], ""),
        ("one query via POST /v1/embeddings", figures["query_via_api_p50_ms"], figures["query_via_api_p95_ms"]),
        (f"batch of {options['batch']} texts (~{figures['batch_tokens_per_text']} tokens each)",
         figures["batch_p50_ms"], ""),
        ("one query while another caller's batches run", figures["query_during_batches_p50_ms"],
         figures["query_during_batches_p95_ms"]),
    ], ("measure", "p50 ms", "p95 ms"))
    stdout.write(f"batch throughput: {figures['batch_texts_per_s']} texts/s; ledger rows: {figures['ledger_rows']} "
                 f"(at least {figures['api_calls']} calls), {figures['ledger_errors']} not ok")
    return figures
