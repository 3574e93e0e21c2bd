"""``manage.py bench sse``: how many chat answers one uvicorn worker can stream at once.

Three processes besides this one: the fake OpenAI-compatible upstream (the
model, also serving query embeddings), one uvicorn worker serving the real
site (``POST /chat/<id>/messages``: session auth, limits, hybrid retrieval,
prompt building, the proxy, the ledger, the message rows), and the load
generator (:mod:`apps.chat.sse_load`, aiohttp).

(a) held: N streams at once, a token every ``--interval`` s, held ``--hold`` s:
    streams held without a stall (no gap above 2x the interval), worker RSS
    growth per stream; (b) throughput: ``--throughput-streams`` streams, a
    token every ``--fast-interval`` s: token events/s and the p99 gap; (c) time to
    first token through the chat path minus the upstream alone, one at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.test import override_settings

from apps.chat.heap import ASGI_APP as HEAP_ASGI_APP
from apps.chat.heap import HeapProbe
from apps.chat.models import Conversation
from apps.core.bench import percentile, print_table, register
from apps.core.sessions import SessionStore
from apps.documents.models import Document

BASE_DIR = Path(__file__).resolve().parent.parent.parent
SOURCE = "bench-sse"
TOPICS = [
    ("Glaciers", "Glaciers flow downhill under their own weight and carve U-shaped valleys over millennia."),
    ("Tides", "Tides rise and fall twice a day because of the gravity of the Moon and the Sun."),
    ("Volcanoes", "Volcanoes erupt when magma rises through the crust and pressure is released."),
    ("Coral reefs", "Coral reefs are built by colonies of tiny animals that secrete calcium carbonate."),
    ("Monsoons", "Monsoons are seasonal winds that bring heavy rain when land heats faster than the sea."),
    ("Aurora", "Auroras appear when charged particles from the Sun strike the upper atmosphere."),
    ("Deserts", "Deserts receive less than 250 millimetres of rain a year and swing widely in temperature."),
    ("Rivers", "Rivers carry sediment to the sea and build deltas where the current slows down."),
]


# The streaming endpoints --route chooses between: the page's (its async view) and the API's (DRF).
STREAM_ROUTES = {"page": "/chat/{pk}/messages", "api": "/api/v1/chat/conversations/{pk}/messages"}


def _arguments(parser):
    parser.add_argument("--streams", type=int, default=2000, help="held connections (run a)")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds every stream is held (run a)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between upstream tokens (run a)")
    parser.add_argument("--throughput-streams", type=int, default=200, help="streams in run b")
    parser.add_argument("--fast-interval", type=float, default=0.02, help="seconds between tokens (run b)")
    parser.add_argument("--fast-tokens", type=int, default=500, help="tokens per answer (run b)")
    parser.add_argument("--ttft-samples", type=int, default=100, help="sequential requests per side (run c)")
    parser.add_argument("--ttft-questions", default="", metavar="FILE",
                        help="run (c) asks these questions in turn instead of one fixed question: a BEIR "
                             "queries.jsonl (its \"text\") or one question per line, e.g. "
                             "../shared/datasets/scifact/queries.jsonl for retrieval as real claims load it")
    parser.add_argument("--query-embeddings", choices=("upstream", "local"), default="upstream",
                        help="who embeds the questions: the fake upstream over HTTP (default, as in earlier "
                             "sessions' figures) or the local model in the worker, as a default deployment "
                             "does (EMBEDDING_PROVIDER=local; EMBEDDING_LOCAL_RUNTIME picks onnx or torch)")
    parser.add_argument("--ramp", type=float, default=200.0, help="new streams per second while opening (run a)")
    parser.add_argument("--upstream-pool-limit", type=int, default=0,
                        help="override LLM_HTTP_POOL_LIMIT (upstream connections per worker) for this run")
    parser.add_argument("--isolated", action="store_true",
                        help="run against a fresh database holding only the bench's 8 documents (created, migrated "
                             "and dropped by the bench), not the development database: reproducible figures")
    parser.add_argument("--route", choices=sorted(STREAM_ROUTES), default="page",
                        help="which streaming endpoint answers: the chat page's (POST /chat/<id>/messages) or the "
                             "API's (POST /api/v1/chat/conversations/<id>/messages, DRF)")
    parser.add_argument("--only", default="held,throughput,ttft",
                        help="comma-separated runs to do (held, throughput, ttft); figures of skipped runs are null")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="run (a) with tracemalloc in the worker (FRAMES frames per allocation) and report the "
                             "Python heap one more held stream costs, by allocation site (the worker is much slower)")


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores, since boot)."""
    with open("/proc/stat") as fh:
        cpu = [int(v) for v in fh.readline().split()[1:]]
    idle = cpu[3] + cpu[4]  # idle + iowait
    return (sum(cpu[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:  # /readyz: 503 until the model is loaded
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up: {log.read_text()[-2000:]}")


class _Processes:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, args: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
        log = Path(tempfile.mkstemp(prefix="bench-sse-", suffix=".log")[1])
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=_raise_nofile)  # noqa: PLW1509 - only sets a resource limit
        self.procs.append(proc)
        self.logs.append(log)
        return proc, log

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _configure_upstream(base: str, **config) -> None:
    response = httpx.post(f"{base}/_fake/config", json={"reset": True, **config}, timeout=10)
    response.raise_for_status()


def _load(spec: dict, env: dict, on_line=None) -> dict:
    """Run the load generator process; ``on_line`` sees each progress line."""
    proc = subprocess.Popen([sys.executable, "-m", "apps.chat.sse_load", json.dumps(spec)], cwd=BASE_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = ""
    for line in proc.stdout:
        line = line.strip()
        if not line:
            continue
        last = line
        if on_line is not None and not line.startswith("{"):
            on_line(line)
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.read()[-3000:]}")
    return json.loads(last)


def _setup_data(conversations: int, upstream_v1: str, *, local_embeddings: bool = False
                ) -> tuple[object, str, list[int]]:
    """A bench user with a signed-in session, conversations, and embedded documents (by the
    fake upstream's embeddings, or with ``local_embeddings`` by this process's local model)."""
    from apps.documents.services import embed_documents_bulk
    from apps.llm.embeddings import reset_embedding_backends

    _cleanup()
    user = get_user_model().objects.create_user(username=f"bench-sse-{secrets.token_hex(4)}",
                                                password=secrets.token_urlsafe(16))
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    docs = Document.objects.bulk_create([  # bulk: no signals, nothing queued for the real worker
        Document(title=title, slug=f"{SOURCE}-{i}", body=body, status=Document.Status.PUBLISHED,
                 visibility=Document.Visibility.PUBLIC, source=SOURCE, external_id=str(i))
        for i, (title, body) in enumerate(TOPICS)
    ])
    backends = {"default": {"BACKEND": "apps.llm.embeddings.openai_http.OpenAIHTTPBackend",
                            "OPTIONS": {"BASE_URL": upstream_v1, "API_KEY": "", "MODEL": "fake-embedding",
                                        "DIMENSIONS": 384, "MAX_TOKENS": 256}}}
    with override_settings(EMBEDDING_BACKENDS=settings.EMBEDDING_BACKENDS if local_embeddings else backends):
        reset_embedding_backends()
        embed_documents_bulk([d.pk for d in docs])
    reset_embedding_backends()
    ids = [c.pk for c in Conversation.objects.bulk_create([Conversation(owner=user) for _ in range(conversations)])]
    return user, session.session_key, ids


def _corpus(user) -> dict:
    """What retrieval searches for the bench user: the TTFT depends on it (a SciFact-sized
    development database retrieves in about 5 ms, the bench's 8 documents alone in 0.6)."""
    from apps.documents.models import Chunk
    from apps.documents.selectors import visible_documents

    visible = visible_documents(user=user)
    return {"corpus_documents": visible.count(),
            "corpus_chunks": Chunk.objects.filter(document__in=visible, embedding__isnull=False).count()}


def _query_embedder(choice: str) -> str:
    if choice != "local":
        return "upstream"
    backend = settings.EMBEDDING_BACKENDS["default"]["BACKEND"] if settings.EMBEDDING_PROVIDER == "local" else "?"
    return f"local:{backend.rsplit('.', 1)[-1]}"


def _cleanup() -> None:
    get_user_model().objects.filter(username__startswith="bench-sse-").delete()  # conversations cascade
    Document.objects.filter(source=SOURCE).delete()


ISOLATED_DATABASE = "quire_bench_sse"


@contextlib.contextmanager
def _isolated_database(stdout):
    """A fresh, migrated database for this process and (``DATABASE_URL``) its children; dropped after."""
    from django.db import connection

    from apps.core.db import database_url

    stdout.write(f"creating and migrating the isolated database {ISOLATED_DATABASE} ...")
    original, url_before = connection.settings_dict["NAME"], os.environ.get("DATABASE_URL")
    connection.settings_dict.setdefault("TEST", {})["NAME"] = ISOLATED_DATABASE
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    os.environ["DATABASE_URL"] = database_url(connection.settings_dict)
    try:
        yield
    finally:
        if url_before is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = url_before
        connection.creation.destroy_test_db(original, verbosity=0)


@register("sse", help="Chat SSE: held streams per uvicorn worker, KB/stream, added TTFT, events/s",
          arguments=_arguments)
def bench_sse(*, stdout, options):
    if options["isolated"]:
        with _isolated_database(stdout):
            return _bench_sse(stdout=stdout, options=options)
    return _bench_sse(stdout=stdout, options=options)


def ttft_questions(path: str) -> list[str]:
    """The questions of ``path``: a BEIR ``queries.jsonl`` (each line's ``text``) or plain lines."""
    questions = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                questions.append(json.loads(line)["text"] if line.startswith("{") else line)
    if not questions:
        raise ValueError(f"--ttft-questions: no question in {path}")
    return questions


def bench_question() -> str:
    """A question no earlier run asked. The proxy's response cache (keyed by the prompt and the
    reader's permission scope, an hour by default) must not answer it, or the bench times a
    cache hit instead of a model call: an ``--isolated`` database gives the bench user the same
    id in every run, so the scope alone does not tell runs apart."""
    return f"How do glaciers and tides shape the coast? (run {secrets.token_hex(4)})"


def _bench_sse(*, stdout, options):
    nofile = _raise_nofile()
    n, hold, interval = options["streams"], options["hold"], options["interval"]
    fast_n, samples = options["throughput_streams"], options["ttft_samples"]
    runs = {part.strip() for part in options["only"].split(",") if part.strip()}
    if not runs <= {"held", "throughput", "ttft"}:
        raise ValueError(f"--only: unknown runs {sorted(runs - {'held', 'throughput', 'ttft'})}")
    if "held" not in runs:
        n = 0
    if options["tracemalloc"] and not n:
        raise ValueError("--tracemalloc measures the held streams: run (a) too")
    probe = HeapProbe(options["tracemalloc"]) if options["tracemalloc"] else None
    procs = _Processes()
    try:
        upstream_port, app_port = _free_port(), _free_port()
        upstream = f"http://127.0.0.1:{upstream_port}"
        base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc, log = procs.start([sys.executable, "-m", "apps.llm.testing.fake_upstream", "--port", str(upstream_port)],
                                base_env)
        _wait_http(f"{upstream}/_fake/stats", proc, log)
        local_embeddings = options["query_embeddings"] == "local"
        user, session_key, conversations = _setup_data(n + fast_n + samples + 5, upstream + "/v1",
                                                       local_embeddings=local_embeddings)
        options["corpus"] = _corpus(user)

        app_env = {
            **base_env, "DEBUG": "False", "LOG_LEVEL": "WARNING",
            "LLM_OPENAI_BASE_URL": upstream + "/v1", "LLM_OPENAI_API_KEY": "bench", "LLM_OPENAI_MODEL": "gpt-4o-mini",
            # A stream waiting for a pooled upstream connection waits; it does not fail over.
            "LLM_TIMEOUT_CONNECT": "600", "LLM_TIMEOUT_FIRST_TOKEN": "600", "LLM_TIMEOUT_TOTAL": "900",
            "CHAT_MAX_STREAM_SECONDS": "900",
            **({"EMBEDDING_PROVIDER": "local"} if local_embeddings else {
                "EMBEDDING_PROVIDER": "openai", "EMBEDDING_API_BASE": upstream + "/v1",
                "EMBEDDING_MODEL": "fake-embedding", "EMBEDDING_DIMENSIONS": "384", "EMBEDDING_MAX_TOKENS": "256"}),
            "CHAT_QUESTIONS_PER_MINUTE": "0", "CHAT_ANON_QUESTIONS_PER_MINUTE": "0",
            "API_THROTTLE_USER": "100000000/day",  # the API route's DRF throttle: every stream is the bench user's
        }
        if options["upstream_pool_limit"]:
            app_env["LLM_HTTP_POOL_LIMIT"] = str(options["upstream_pool_limit"])
        if probe is not None:
            app_env.update(probe.env())
        application = HEAP_ASGI_APP if probe is not None else "config.asgi:application"
        app, app_log = procs.start(
            [sys.executable, "-m", "uvicorn", application, "--host", "127.0.0.1", "--port", str(app_port),
             "--workers", "1", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
             "--backlog", "4096", "--timeout-keep-alive", "60"], app_env)
        _wait_http(f"http://127.0.0.1:{app_port}/readyz", app, app_log)
        csrf = secrets.token_hex(16)  # 32 chars: a CSRF secret the header may repeat as-is
        spec = {
            "base_url": f"http://127.0.0.1:{app_port}",
            "cookies": {settings.SESSION_COOKIE_NAME: session_key, settings.CSRF_COOKIE_NAME: csrf},
            "headers": {"X-CSRFToken": csrf, "Accept": "text/event-stream"},
            "question": bench_question(),
            "run_tag": secrets.token_hex(4),  # makes a file's questions (--ttft-questions) this run's own
        }
        urls = [STREAM_ROUTES[options["route"]].format(pk=pk) for pk in conversations]

        # Warm-up: imports, pools, tokenizer, first queries.
        _configure_upstream(upstream, tokens=5, token_delay=0.0)
        warm = _load({**spec, "mode": "throughput", "urls": urls[-5:], "question": "warm-up"}, base_env)
        if warm["completed"] != 5:
            raise RuntimeError(f"warm-up failed: {warm} {app_log.read_text()[-2000:]}")
        time.sleep(1)

        # (c) time to first token, one request at a time.
        first_tokens = {"direct_s": [], "chat_s": [], "prepare_ms": [], "retrieval_ms": [], "proxy_ttft_ms": []}
        if "ttft" in runs:
            _configure_upstream(upstream, tokens=3, token_delay=0.0)
            cpu_before, busy_before = _cpu_s(app.pid), _machine_busy_s()
            questions = ttft_questions(options["ttft_questions"]) if options["ttft_questions"] else None
            first_tokens = _load({**spec, "mode": "ttft", "samples": samples, "questions": questions,
                                  "question": spec["question"] + " (ttft)", "upstream_url": upstream + "/v1",
                                  "urls": urls[n + fast_n:n + fast_n + samples]}, base_env)
            # CPU per answer (the whole answer, not only up to its first token; 10 ms clock ticks, over all samples).
            answers = max(1, len(first_tokens["chat_s"]))
            first_tokens["worker_cpu_ms"] = (_cpu_s(app.pid) - cpu_before) * 1000 / answers
            first_tokens["machine_cpu_ms"] = (_machine_busy_s() - busy_before) * 1000 / answers

        # (b) throughput.
        fast = dict.fromkeys(("streams", "completed", "events_per_s", "events_per_s_all_live", "window_s",
                              "gap_p50_ms", "gap_p99_ms", "gap_max_ms", "errors"))
        if "throughput" in runs:
            stdout.write(f"(b) {fast_n} streams, a token every {options['fast_interval'] * 1000:.0f} ms ...")
            _configure_upstream(upstream, tokens=options["fast_tokens"], token_delay=options["fast_interval"])
            cpu_before = _cpu_s(app.pid)
            fast = _load({**spec, "mode": "throughput", "urls": urls[n:n + fast_n],
                          "question": spec["question"] + " (b)"}, base_env)
            time.sleep(3)  # answers are being saved
            # The worker's CPU for the whole run (the 200 answers' retrieval and saves included) per token event.
            fast["worker_cpu_us_per_event"] = (_cpu_s(app.pid) - cpu_before) * 1e6 / max(1, fast["events"] or 0)

        # (a) held connections.
        if "held" not in runs:
            return _figures(n, None, None, None, first_tokens, fast, options, nofile)
        stdout.write(f"(a) opening {n} streams, a token every {interval}s, holding {hold}s ...")
        _configure_upstream(upstream, tokens=int((hold + 300) / interval), token_delay=interval)
        rss_before, threads_before = _rss_kb(app.pid), _threads(app.pid)
        samples_rss: list[int] = []
        half: dict = {}
        peak_threads = [threads_before]

        def sample(line: str) -> None:
            if line.startswith("HALF"):
                half["streams"] = int(line.split()[1])
                samples = []
                for _ in range(3):
                    time.sleep(1.0)
                    samples.append(_rss_kb(app.pid))
                half["rss_kb"] = statistics.median(samples)
                if probe is not None:
                    probe.take(app.pid)
            if line.startswith("HOLDING"):
                stdout.write(f"    all streams open ({line}); sampling worker memory")
                for _ in range(3):
                    time.sleep(min(5.0, hold / 4))
                    samples_rss.append(_rss_kb(app.pid))
                    peak_threads.append(_threads(app.pid))
                if probe is not None:
                    probe.take(app.pid)

        held = _load({**spec, "mode": "held", "urls": urls[:n], "question": spec["question"] + " (held)",
                      "hold_s": hold, "interval": interval,
                      "ramp_per_s": options["ramp"],
                      # a snapshot of a traced heap takes a while: the ramp waits for it
                      "half_pause_s": 60.0 if probe is not None else 4.0, "open_timeout_s": n / options["ramp"] + 60},
                     base_env, on_line=sample)
        rss_during = statistics.median(samples_rss) if samples_rss else _rss_kb(app.pid)
        figures = _figures(n, held, rss_before, rss_during, first_tokens, fast, options, nofile,
                           peak_threads=max(peak_threads), half=half)
        if probe is not None and probe.taken == 2 and held["streams_open"] > half.get("streams", 0) > 0:
            figures["traced_kb_per_stream"], sites = probe.growth(held["streams_open"] - half["streams"])
            print_table(stdout, [(site.where, f"{site.kb_per_stream} KB", f"{site.objects_per_stream} objects")
                                 for site in sites], ("allocated at (per held stream)", "heap", "objects"))
    finally:
        procs.stop()
        _cleanup()
        if probe is not None:
            probe.cleanup()
    print_table(stdout, [
        ("held streams", f"{held['streams_held']}/{n}",
         f"opened in {held['open_s']} s, worst gap {held['worst_gap_s']} s"),
        ("memory", f"{figures['kb_per_stream']} KB/stream", f"RSS {figures['worker_rss_mb_before']} -> "
                                                           f"{figures['worker_rss_mb_holding']} MB; "
                                                           f"{figures['kb_per_stream_marginal']} KB/stream "
                                                           f"from half to all streams"),
        ("ttft added p50", f"{figures['ttft_added_p50_ms']} ms", f"chat {figures['ttft_chat_p50_ms']} ms vs upstream "
                                                               f"{figures['ttft_direct_p50_ms']} ms; server: "
                                                               f"prepare {figures['server_prepare_p50_ms']} ms, of "
                                                               f"which retrieval {figures['server_retrieval_p50_ms']} ms; "
                                                               f"added beyond retrieval "
                                                               f"{figures['ttft_added_beyond_retrieval_p50_ms']} ms"),
        ("throughput", f"{figures['events_per_s']} events/s", f"gap p99 {figures['gap_p99_ms']} ms, "
                                                            f"{fast['completed']}/{fast['streams']} completed"),
    ], ("figure", "value", "detail"))
    return figures


def _p50(values: list[float], pct: float = 50, scale: float = 1.0) -> float | None:
    return round(percentile(values, pct) * scale, 2) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _figures(n: int, held: dict | None, rss_before: int | None, rss_during: float | None, first_tokens: dict,
             fast: dict, options: dict, nofile: int, *, peak_threads: int | None = None,
             half: dict | None = None) -> dict:
    """The JSON figures; those of a run left out with ``--only`` are null."""
    held = held or {}
    open_streams = held.get("streams_open")
    marginal = None
    if held and half and open_streams and open_streams > half.get("streams", 0) > 0:
        marginal = round((rss_during - half["rss_kb"]) / (open_streams - half["streams"]), 1)
    direct_p50, chat_p50 = _p50(first_tokens["direct_s"], scale=1000), _p50(first_tokens["chat_s"], scale=1000)
    return {
        "streams_requested": n,
        "streams_held": held.get("streams_held"),
        "hold_s": held.get("hold_s"),
        "open_s": held.get("open_s"),
        "worst_gap_s": held.get("worst_gap_s"),
        "held_errors": held.get("errors"),
        "not_held": held.get("not_held"),
        "streams_open_at_sampling": open_streams,
        "kb_per_stream": round((rss_during - rss_before) / max(1, open_streams), 1) if held else None,
        # Growth from half the streams open to all of them: the cost of one more stream.
        "kb_per_stream_marginal": marginal,
        "streams_open_at_half": (half or {}).get("streams"),
        "worker_rss_mb_before": round(rss_before / 1024, 1) if held else None,
        "worker_rss_mb_holding": round(rss_during / 1024, 1) if held else None,
        "worker_threads_peak": peak_threads,
        "ttft_direct_p50_ms": direct_p50,
        "ttft_chat_p50_ms": chat_p50,
        "ttft_chat_p99_ms": _p50(first_tokens["chat_s"], 99, scale=1000),
        "ttft_added_p50_ms": round(chat_p50 - direct_p50, 2) if chat_p50 is not None else None,
        # The same with each answer's retrieval (its query vector and statement) taken out: what the
        # streaming path itself adds, whatever the corpus.
        "ttft_added_beyond_retrieval_p50_ms": _minus(_p50(first_tokens.get("beyond_retrieval_s") or [], scale=1000),
                                                     direct_p50),
        "server_prepare_p50_ms": _p50(first_tokens["prepare_ms"]),
        # Of the preparation: the passages retrieved (the wait for the question's vector, then the statement).
        "server_retrieval_p50_ms": _p50(first_tokens.get("retrieval_ms") or []),
        "server_proxy_ttft_p50_ms": _p50(first_tokens["proxy_ttft_ms"]),
        # Answers the proxy's cache served (no model call): 0, or the TTFT figures time cache hits.
        "ttft_cached_answers": first_tokens.get("cached"),
        "ttft_worker_cpu_ms_per_answer": _round(first_tokens.get("worker_cpu_ms")),
        "ttft_machine_cpu_ms_per_answer": _round(first_tokens.get("machine_cpu_ms")),
        "throughput_streams": fast["streams"],
        "throughput_completed": fast["completed"],
        "events_per_s": fast["events_per_s"],
        "events_per_s_all_live": fast["events_per_s_all_live"],
        "throughput_all_live_window_s": fast["window_s"],
        "gap_p50_ms": fast["gap_p50_ms"],
        "gap_p99_ms": fast["gap_p99_ms"],
        "gap_max_ms": fast["gap_max_ms"],
        "throughput_errors": fast["errors"],
        "throughput_worker_cpu_us_per_event": _round(fast.get("worker_cpu_us_per_event")),
        **options.get("corpus", {}),
        "route": options.get("route", "page"),
        # Run (c)'s questions: one fixed question, or the file's in turn (--ttft-questions).
        "ttft_questions": os.path.basename(options["ttft_questions"]) if options.get("ttft_questions") else "fixed",
        # Who embedded the questions: the fake upstream, or the worker's local model (its backend class).
        "query_embeddings": _query_embedder(options.get("query_embeddings", "upstream")),
        "upstream_pool_limit": options["upstream_pool_limit"] or settings.LLM_HTTP_POOL_LIMIT,
        "nofile_limit": nofile,
        "traced_kb_per_stream": None,  # --tracemalloc: the Python heap one more held stream costs
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
