"""``make bench-peers`` (bench/peers/): the Redis it starts is its own, on a free loopback port,
and gone afterwards; Celery comes from a lock of its own, every version pinned and hashed."""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
from pathlib import Path
from types import ModuleType

import pytest

PEERS = Path(__file__).resolve().parents[3] / "bench" / "peers"


def compare_module() -> ModuleType:
    # bench/ is no package of the distribution: loaded by its path.
    spec = importlib.util.spec_from_file_location("peers_compare", PEERS / "compare.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answers_ping(url: str) -> bool:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    try:
        with socket.create_connection((host, int(port)), 2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def test_the_run_starts_a_redis_of_its_own_and_stops_it(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on this machine")
    compare = compare_module()
    with compare.redis_server(binary, tmp_path) as url:
        assert url.startswith("redis://127.0.0.1:")
        assert ":6379/" not in url  # never the system's
        assert answers_ping(url)
    assert not answers_ping(url)


def test_celery_is_locked_with_exact_versions_and_hashes() -> None:
    lock = (PEERS / "requirements.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.MULTILINE)
    assert ("celery", "5.7.0") in pins
    assert any(name == "redis" for name, _ in pins)
    assert lock.count("--hash=sha256:") >= len(pins)
