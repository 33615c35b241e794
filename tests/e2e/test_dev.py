"""``tether-manager dev`` end to end: it prints what to paste, a task runs through its
delegate with exactly those settings, and SIGTERM stops both children and removes the
temporary directory."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from tests.e2e.harness import BIN, TIME_SCALE, Cluster, Proc


async def test_dev_runs_a_task_with_the_printed_settings_and_cleans_up(cluster: Cluster) -> None:
    dev = Proc(
        "dev",
        [
            str(BIN / "tether-manager"),
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--time-scale",
            str(TIME_SCALE),
            "--log-format",
            "json",
        ],
    )
    cluster.procs.append(dev)
    await dev.start()
    await dev.wait_stdout(r"tasks run as this user")
    exports = {
        m.group(1): m.group(2)
        for line in dev.stdout
        if (m := re.fullmatch(r"\s+export (\w+)=(.*)", line))
    }
    key_file = re.fullmatch(r"\$\(cat (.*)\)", exports["TETHER_API_KEY"])
    assert key_file is not None
    root = Path(exports["TETHER_CA_FILE"]).parents[2]
    assert root.name.startswith("tether-dev-")
    assert root.is_dir()
    env = {
        "TETHER_MANAGER_URL": exports["TETHER_MANAGER_URL"],
        "TETHER_CA_FILE": exports["TETHER_CA_FILE"],
        "TETHER_API_KEY": Path(key_file.group(1)).read_text().strip(),
    }
    # The key is named by its file, never printed.
    assert env["TETHER_API_KEY"] not in "\n".join(dev.stdout + dev.stderr)

    done = await cluster.run(str(BIN / "tether"), "task", "run", "--", "echo", "from-dev", env=env)
    assert done.code == 0, done.stderr
    assert "from-dev" in done.stdout
    listed = await cluster.run(str(BIN / "tether"), "delegate", "list", env=env)
    assert "dev-delegate" in listed.stdout

    assert await dev.stop(signal.SIGTERM) == 0
    assert not root.exists()
    assert dev.stdout[-1] == f"tether-manager dev: stopped; removed {root}"
    # Both children ended in order: the delegate stopped cleanly, then the manager.
    events = [e.get("event") for e in dev.events()]
    assert "delegate stopped" in events
    assert events.index("delegate stopped") < events.index("manager stopping")
