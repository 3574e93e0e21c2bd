"""Each checkout's embedded Redis has a port of its own: two checkouts on one machine
never share a Celery broker (a worker would run the other checkout's tasks on its own
database)."""

import os
import subprocess
import sys
from pathlib import Path

from apps.core.devservices import BASE_DIR, checkout_redis_port


def _settings_redis_url(**env) -> str:
    """What a fresh process (make run, a CI clone) would use."""
    environ = {k: v for k, v in os.environ.items() if k not in ("QUIRE_REDIS_PORT", "QUIRE_DATA_DIR")}
    result = subprocess.run([sys.executable, "-c", "from apps.core import devservices; print(devservices.redis_url())"],
                            cwd=BASE_DIR, env={**environ, **env}, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_two_checkouts_get_two_ports_and_one_checkout_always_the_same(tmp_path):
    first, second = tmp_path / "main" / ".data", tmp_path / "ci-clone" / ".data"
    assert checkout_redis_port(first) != checkout_redis_port(second)
    assert checkout_redis_port(first) == checkout_redis_port(tmp_path / "main" / "x" / ".." / ".data")
    assert all(20000 <= checkout_redis_port(d) < 30000 for d in (first, second, Path("/")))


def test_a_process_uses_its_data_directorys_port_unless_told_otherwise(tmp_path):
    data = tmp_path / ".data"
    assert _settings_redis_url(QUIRE_DATA_DIR=str(data)) == f"redis://127.0.0.1:{checkout_redis_port(data)}/0"
    assert _settings_redis_url(QUIRE_DATA_DIR=str(data), QUIRE_REDIS_PORT="6390") == "redis://127.0.0.1:6390/0"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_this_checkouts_redis_on_the_old_shared_port_hands_over_its_data(tmp_path, monkeypatch):
    """After the upgrade, the server still running on the old port from this checkout's data
    directory is shut down before the new one starts on the same AOF (two writers would corrupt
    it); its data carries over. A server on the old port from another directory is left alone."""
    import redis

    from apps.core import devservices

    legacy, new, foreign = _free_port(), _free_port(), _free_port()
    ours, theirs = tmp_path / "ours" / "redis", tmp_path / "theirs" / "redis"
    devservices.start_redis(legacy, ours)
    devservices.start_redis(foreign, theirs)
    try:
        redis.Redis(port=legacy).set("kept", "yes")
        monkeypatch.setattr(devservices, "LEGACY_REDIS_PORT", foreign)
        devservices.start_redis(new, ours)  # the old-port server is another checkout's: untouched
        assert devservices._redis_alive(foreign)
        devservices.stop_redis(new, ours)
        monkeypatch.setattr(devservices, "LEGACY_REDIS_PORT", legacy)
        devservices.start_redis(new, ours)
        assert not devservices._redis_alive(legacy)
        assert redis.Redis(port=new).get("kept") == b"yes"
    finally:
        for port, data in ((legacy, ours), (new, ours), (foreign, theirs)):
            devservices.stop_redis(port, data)
