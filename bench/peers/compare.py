"""``make bench-peers``: Tether against Celery with Redis, the same job on the same machine,
in one run.

Starts a ``redis-server`` of its own on a free loopback port (never the system one) and a
Celery worker (default prefork pool, 2 processes) from the peers' venv, and measures
(bench/peers/celery_job.py):

- 2,000 tasks submitted at once, each running ``subprocess.run("true", shell=True)`` and
  returning its exit code and output: tasks/s;
- one task at a time: submit -> result p50, as the caller sees it.

Then the same on Tether with ``tether bench``: two real ``tether-delegate`` processes
(``--real-delegates 2 --interpreter sh --tasks 2000 --concurrency 50``), and
``--sequential`` for one task at a time. ``--interpreter sh``: ``shell=True`` runs the
script with ``/bin/sh``, so Tether's tasks do too (its default shell is bash). Prints one
JSON line per side and one with both figures, their ratios and the load average.
Everything it started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run with the project's python: the same percentiles as tether bench reports.
from manager.bench.common import percentiles

HERE = Path(__file__).resolve().parent
START_TIMEOUT_S = 30.0


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_redis(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not answer on port {port}")


@contextlib.contextmanager
def redis_server(binary: str, workdir: Path) -> Iterator[str]:
    """A Redis of this run's own, in memory only, on a free loopback port."""
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for_redis(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@contextlib.contextmanager
def celery_worker(python: Path, url: str, workdir: Path) -> Iterator[None]:
    argv = [
        str(python),
        "-m",
        "celery",
        "-A",
        "celery_job",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    env = {**os.environ, "PEERS_REDIS_URL": url}
    with (workdir / "celery.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        stop(proc)


def last_json(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=HERE, env=env, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed with status {done.returncode}")
    out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return out


def show(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peer-python", type=Path, required=True, help="python of the peers' venv")
    p.add_argument("--tether", default=str(Path(sys.executable).parent / "tether"))
    p.add_argument("--redis-server", default="redis-server")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    # Absolute, not resolved: a venv's python is a symlink out of the venv.
    args.peer_python = args.peer_python.absolute()
    if os.sep in args.tether:
        args.tether = str(Path(args.tether).absolute())
    binary = shutil.which(args.redis_server)
    if binary is None:
        print(
            f"error: no {args.redis_server} (Debian: apt-get install redis-server)", file=sys.stderr
        )
        return 2
    loads = {"start": load_average()}
    with tempfile.TemporaryDirectory(prefix="tether-peers-") as tmp:
        workdir = Path(tmp)
        with redis_server(binary, workdir) as url, celery_worker(args.peer_python, url, workdir):
            celery_out = last_json(
                [
                    str(args.peer_python),
                    "celery_job.py",
                    "--tasks",
                    str(args.tasks),
                    "--sequential",
                    str(args.sequential),
                ],
                env={**os.environ, "PEERS_REDIS_URL": url},
            )
    celery_out["sequential_result_ms"] = percentiles(celery_out["sequential_result_ms"])
    show(celery_out)
    # sh, as Celery's subprocess.run(..., shell=True) is: the same job on both sides.
    tether = [args.tether, "bench", "--real-delegates", "2", "--interpreter", "sh"]
    burst = last_json([*tether, "--tasks", str(args.tasks), "--concurrency", str(args.concurrency)])
    show(burst)
    alone = last_json([*tether, "--tasks", str(args.sequential), "--sequential"])
    show(alone)
    loads["end"] = load_average()
    c_rate, t_rate = celery_out["tasks_per_s"], burst["tasks_per_s"]
    c_p50 = celery_out["sequential_result_ms"]["p50"]
    t_p50 = alone["sequential_result_ms"]["p50"]
    summary = {
        "bench": "peers",
        "tasks": args.tasks,
        "celery_tasks_per_s": c_rate,
        "tether_tasks_per_s": t_rate,
        # Above 1: Tether is ahead.
        "tasks_per_s_ratio": round(t_rate / c_rate, 2),
        "celery_sequential_p50_ms": c_p50,
        "tether_sequential_p50_ms": t_p50,
        # Below 1: Tether is ahead.
        "p50_ratio": round(t_p50 / c_p50, 2),
        "loadavg_1m": loads,
    }
    show(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
