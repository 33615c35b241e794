"""One benchmark run: start the managers (or use the one given), run, stop them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from manager.bench.common import Managers, raise_fd_limit, start_managers
from manager.bench.options import BenchOptions, validate
from manager.bench.real import run_real
from manager.bench.sim import run_simulated

__all__ = ["FD_SLACK", "fd_problem", "run_bench"]

# Open files a bench or manager process needs beside one socket a delegate.
FD_SLACK = 200


def fd_problem(opts: BenchOptions) -> str | None:
    """Raise the open-files limit for the run, or say why this host cannot hold it.

    Each delegate is a socket in this process and another in the manager's, plus slack for
    the HTTPS pool, the database and the rest: checked first, not met as EMFILE mid-run.
    """
    needed = opts.delegates + FD_SLACK
    allowed = raise_fd_limit(needed)
    if allowed >= needed:
        return None
    return (
        f"--delegates {opts.delegates} needs {needed} open files a process and this host"
        f" allows {allowed} (ulimit -Hn): use at most {allowed - FD_SLACK} delegates"
    )


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run once and return the result (the JSON object ``tether bench`` prints).

    Raises ValueError for options that cannot run, RuntimeError when the run fails.
    """
    problem = validate(opts)
    if problem:
        raise ValueError(problem)
    problem = fd_problem(opts)
    if problem:
        raise ValueError(problem)
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        root = Path(tmp)
        if opts.manager_url:
            managers = Managers([opts.manager_url], opts.api_key or "", opts.ca_file)
        else:
            managers = await start_managers(opts, root)
        try:
            if opts.real_delegates:
                return await run_real(opts, managers, root)
            return await run_simulated(opts, managers)
        finally:
            await managers.stop()
