"""The job of ``make bench-peers`` on Celery: the Celery app and its one task, and the client
that measures it. Runs in the peers' own venv (bench/peers/requirements.txt), never the
project's: ``tether bench`` stays free of Celery.

    worker:  celery -A celery_job worker --pool prefork --concurrency 2
    client:  python celery_job.py --tasks 2000 --sequential 200

The broker and the result backend are the Redis at ``$PEERS_REDIS_URL``. The client prints one
JSON line: 2,000 tasks submitted at once (tasks/s from the first submit to the last result, on
its own clock) and then tasks one at a time (submit -> result, each waited for, in ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import celery
from celery import Celery

app = Celery("tether_bench_peers")
app.conf.broker_url = app.conf.result_backend = os.environ["PEERS_REDIS_URL"]
# Results are read by the client that submitted them, once each.
app.conf.result_expires = 600


@app.task(name="tether_bench_peers.run")
def run(script: str) -> dict[str, object]:
    """What a Tether task of the bench does: run the shell script, return exit code and output."""
    done = subprocess.run(script, shell=True, capture_output=True, text=True, check=False)  # noqa: S602
    return {"exit_code": done.returncode, "output": done.stdout + done.stderr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--script", default="true")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    # The worker answers before anything is timed (its pool started, its queues bound).
    run.delay(args.script).get(timeout=args.timeout)
    load_start = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    pending = [run.delay(args.script) for _ in range(args.tasks)]
    results = [r.get(timeout=args.timeout) for r in pending]
    elapsed = time.perf_counter() - start
    failed = sum(1 for r in results if r["exit_code"] != 0)
    seen: list[float] = []
    for _ in range(args.sequential):
        sent = time.perf_counter()
        run.delay(args.script).get(timeout=args.timeout)
        seen.append((time.perf_counter() - sent) * 1000)
    out = {
        "bench": "peers-celery",
        "celery": celery.__version__,
        "pool": "prefork",
        "concurrency": 2,
        "script": args.script,
        "tasks": args.tasks,
        "failed": failed,
        "elapsed_s": round(elapsed, 3),
        "tasks_per_s": round(args.tasks / elapsed, 1),
        "sequential_tasks": args.sequential,
        # Every wait, in order: the driver (compare.py) reports their percentiles as
        # tether bench does, with the same code.
        "sequential_result_ms": [round(ms, 3) for ms in seen],
        "loadavg_1m": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
