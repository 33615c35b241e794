"""One benchmark run: start the managers (or use the one given), run, stop them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from manager.bench.common import Managers, raise_fd_limit, start_managers
from manager.bench.options import BenchOptions, validate
from manager.bench.real import run_real
from manager.bench.sim import run_simulated

__all__ = ["run_bench"]


async def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run once and return the result (the JSON object ``tether bench`` prints).

    Raises ValueError for options that cannot run, RuntimeError when the run fails.
    """
    problem = validate(opts)
    if problem:
        raise ValueError(problem)
    # Each delegate is a socket here and another in the manager, plus slack for the rest.
    raise_fd_limit(2 * opts.delegates + 1024)
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
