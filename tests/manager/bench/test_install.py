"""``tether bench`` works from a plain ``pip install`` of the project: the bench, and the
manager and delegate it starts, import with only the runtime set installed
(``requirements/runtime.txt``, what ``pip install tether`` brings), no dev extra."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==")

# A fresh interpreter in which every module of a distribution outside the allowed set is
# missing, as it is after a plain install (an optional import then falls back, as it would).
_IMPORT_AS_INSTALLED = """
import importlib.abc, importlib.metadata, json, re, sys

allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(name.partition(".")[0], ())}
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
import manager.client.cli.main, manager.bench.cli, manager.bench.runner  # `tether bench`
import manager.cli, manager.server.app, delegate.cli, delegate.agent  # what it starts
"""


def runtime_set() -> set[str]:
    """The locked runtime distributions, and the project itself."""
    return {"tether"} | {
        re.sub(r"[-_.]+", "-", m.group(1)).lower()
        for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
        if (m := PIN.match(line))
    }


def import_with(allowed: set[str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", _IMPORT_AS_INSTALLED, json.dumps(sorted(allowed))]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)


def test_the_bench_and_what_it_starts_import_with_the_runtime_set_alone() -> None:
    runtime = runtime_set()
    done = import_with(runtime)
    assert done.returncode == 0, done.stderr
    # The check bites: without psutil (where it used to be, in the dev extra) the bench fails.
    done = import_with(runtime - {"psutil"})
    assert done.returncode != 0
    assert "No module named 'psutil'" in done.stderr
