"""`tether` in a pseudo-terminal (pexpect), against a real manager: colour on a terminal and
none under NO_COLOR, tables cut to the terminal's width, the spinner while a task waits for
a delegate (and the warning that none matches), and shell completion in a real bash."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pexpect  # type: ignore[import-untyped]

from tests.e2e.harness import BIN, Cluster

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
WAIT = 60  # pexpect's bound on waiting for a pattern (it returns as soon as it shows)


def spawn(cluster: Cluster, args: list[str], *, width: int, **env: str) -> pexpect.spawn:
    full = {
        **os.environ,
        **cluster.cli_env(),
        "TETHER_CONFIG_DIR": str(cluster.root / "cli"),
        "TERM": "xterm-256color",
        **env,
    }
    if "NO_COLOR" not in env:
        full.pop("NO_COLOR", None)
    full.pop("COLUMNS", None)  # the terminal's own width, from the pty
    return pexpect.spawn(
        str(BIN / "tether"),
        args,
        env=full,
        dimensions=(40, width),
        encoding="utf-8",
        timeout=WAIT,
    )


def run_to_end(cluster: Cluster, args: list[str], *, width: int, **env: str) -> tuple[int, str]:
    child = spawn(cluster, args, width=width, **env)
    out = child.read()
    child.close()
    return int(child.exitstatus or 0), out


async def test_a_waiting_task_spins_then_tables_are_coloured_and_fit(cluster: Cluster) -> None:
    await cluster.start_manager()

    def waiting_run() -> tuple[str, int]:
        child = spawn(
            cluster,
            ["task", "run", "--name", "waits", "--selector", "nowhere", "--", "true"],
            width=100,
        )
        child.expect(r"task (task_\w+) submitted")
        task_id = str(child.match.group(1))
        child.expect("warning: no connected delegate matches nowhere")
        child.expect("waiting for a delegate…")  # the spinner, drawn in place
        child.expect("waiting for a delegate…")  # and redrawn
        child.sendintr()  # Ctrl-C: the task is cancelled
        child.expect(pexpect.EOF)
        child.close()
        return task_id, int(child.exitstatus or 0)

    task_id, code = await asyncio.to_thread(waiting_run)
    assert code == 130

    code, coloured = await asyncio.to_thread(run_to_end, cluster, ["task", "list"], width=80)
    assert code == 0, coloured
    lines = coloured.replace("\r", "").strip("\n").split("\n")
    plain = [ANSI_COLOUR.sub("", line) for line in lines]
    assert plain[0].split()[:3] == ["NAME", "ID", "STATE"]
    assert plain[1].split()[0] == "waits"
    assert ANSI_COLOUR.search(coloured), "a state is coloured on a terminal"
    assert all(len(line) <= 80 for line in plain), plain
    assert "…" in plain[1]  # a cell cut to fit, not a wrapped row
    assert task_id.startswith(plain[1].split()[1].rstrip("…"))

    code, uncoloured = await asyncio.to_thread(
        run_to_end, cluster, ["task", "list"], width=200, NO_COLOR="1"
    )
    assert code == 0
    assert not ANSI_COLOUR.search(uncoloured)
    assert "cancelled" in uncoloured
    assert task_id in uncoloured  # wide enough: whole


async def test_bash_completes_commands_and_subcommands(tmp_path: Path) -> None:
    def complete() -> str:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PS1": "$ "}
        shell = pexpect.spawn(
            "bash", ["--norc", "--noprofile"], env=env, encoding="utf-8", timeout=WAIT
        )
        shell.sendline("source <(tether completion bash); echo READY")
        shell.expect("READY\r\n")
        shell.send("tether con\t")
        shell.expect("tether context ")
        shell.send("\t\t")  # both subcommands are offered
        shell.expect(r"add\s+list\s+remove\s+use")
        shell.sendintr()
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
        return str(shell.before)

    await asyncio.to_thread(complete)
