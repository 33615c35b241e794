"""The first start of a data dir prints what to paste, and what it prints works: the CLI's
exports, and a token command plus a ``tether-delegate run`` command that connect a
delegate. Nothing secret is printed; a second start prints none of it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from tests.e2e.harness import BIN, Cluster, Proc


def _pasted(stdout: list[str]) -> list[str]:
    return [line.strip() for line in stdout if line.startswith("    ")]


async def test_first_start_prints_working_commands_and_no_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    manager = await cluster.start_manager()
    await manager.wait_stdout(r"install-service")
    lines = _pasted(manager.stdout)
    exports = {
        name: value
        for line in lines
        if (m := re.fullmatch(r"export (\w+)=(.*)", line))
        for name, value in [m.groups()]
    }
    assert exports["TETHER_MANAGER_URL"] == cluster.url
    assert Path(exports["TETHER_CA_FILE"]) == cluster.ca_file
    assert exports["TETHER_API_KEY"] == f"$(cat {cluster.data_dir / 'admin-api-key'})"
    assert cluster.admin_key not in "\n".join(manager.stdout + manager.stderr)

    # As the text says: the token made on the manager host, the CA copied as ca.pem.
    (token_line,) = [line for line in lines if "token create" in line]
    (run_line,) = [line for line in lines if line.startswith("tether-delegate run")]
    here = tmp_path / "delegate-host"
    here.mkdir()
    made = await cluster.run(
        "bash",
        "-c",
        f"cd {shlex.quote(str(here))} && {token_line}",
        env={"PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert made.code == 0, made.stderr
    assert (here / "token").stat().st_mode & 0o077 == 0
    shutil.copy(cluster.ca_file, here / "ca.pem")
    argv = [str(here / a) if a in ("token", "ca.pem") else a for a in shlex.split(run_line)]
    argv[0] = str(BIN / argv[0])
    delegate = Proc(
        "pasted",
        [
            *argv,
            "--data-dir",
            str(tmp_path / "d"),
            "--time-scale",
            str(cluster.time_scale),
            "--log-format",
            "json",
        ],
    )
    cluster.procs.append(delegate)
    await delegate.start()
    await delegate.wait_event("channel mode", mode="stream")
    done = await cluster.tether("task", "run", "--", "echo", "pasted")
    assert done.code == 0, done.stderr
    assert "pasted" in done.stdout

    again = await cluster.restart_manager()
    await again.stop()  # all it printed is read once it has exited
    assert again.stdout[0].startswith("tether-manager listening on")
    assert not _pasted(again.stdout)
    assert not [line for line in again.stdout if "First start" in line]
