"""A delegate with no capability at all runs its tasks as task users through the task
launcher: a real manager, a root launcher on a socket of its own, and a delegate started as
an unprivileged account with every capability dropped (as the installed unit runs it).

Needs root (to make the accounts and run the launcher), as CI runs. The probe and its
targets are those of tests/e2e/test_isolation.py.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.accounts import system_accounts
from tests.e2e.harness import BIN, Cluster, Proc
from tests.e2e.test_isolation import PROBE, PYTHON, REPO, _parent, _probe

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes accounts, runs the launcher"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)"),
    pytest.mark.skipif(not PYTHON.is_file(), reason="the probe needs /usr/bin/python3"),
    pytest.mark.asyncio(loop_scope="module"),
]


@dataclass
class Setup:
    cluster: Cluster
    base: Path
    owner: str
    home: Path
    tasks: Path
    token_file: Path
    launcher: Proc
    delegate: Proc


@pytest.fixture(scope="module")
def accounts() -> Iterator[list[str]]:
    # The delegate's account, then two slots.
    with system_accounts("tle", 3) as names:
        yield names


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(accounts: list[str]) -> AsyncIterator[Setup]:
    base = Path(tempfile.mkdtemp(prefix="tether-launcher-e2e-", dir="/tmp"))
    base.chmod(0o755)
    (base / "probe.py").write_text(PROBE)
    (base / "probe.py").chmod(0o644)
    (base / "control").write_text("anyone may read this\n")
    (base / "control").chmod(0o644)
    owner, slots = accounts[0], accounts[1:]
    c = Cluster(root=base / "cluster")
    c.root.mkdir()
    c.root.chmod(0o755)
    home, tasks = base / "home", base / "tasks"
    home.mkdir()
    tasks.mkdir()
    token_file, ca = home / "token", home / "ca.pem"
    socket_path = base / "launcher.sock"
    try:
        await c.start_manager()
        token_file.write_text(await c.token("nocaps") + "\n")
        token_file.chmod(0o600)
        shutil.copyfile(c.ca_file, ca)
        for path in (home, tasks, token_file, ca):
            shutil.chown(path, owner, owner)
        home.chmod(0o700)
        launcher = Proc(
            "launcher",
            [
                str(BIN / "tether-task-launcher"), "--socket", str(socket_path),
                "--client-user", owner, "--task-users", ",".join(slots),
                "--work-dir", str(tasks), "--log-format", "json",
            ],
        )  # fmt: skip
        await launcher.start()
        c.procs.append(launcher)
        await launcher.wait_event("task launcher ready")
        # The system's interpreter on this checkout and its virtualenv's packages.
        site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        boot = (
            f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(site)!r}]; "
            "from delegate.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        argv = [
            "setpriv", f"--reuid={owner}", f"--regid={owner}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs",
            "--", str(PYTHON), "-c", boot, "run", "--manager-url", c.url, "--ca-file", str(ca),
            "--token-file", str(token_file), "--name", "nocaps", "--selector", "nocaps",
            "--data-dir", str(home / "data"), "--work-dir", str(tasks), "--max-tasks", "2",
            "--launcher-socket", str(socket_path), "--time-scale", str(c.time_scale),
            "--log-format", "json",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        delegate = Proc("delegate-nocaps", argv)
        delegate.env = env
        await delegate.start()
        c.procs.append(delegate)
        await delegate.wait_event("channel mode", mode="stream")
        yield Setup(c, base, owner, home, tasks, token_file, launcher, delegate)
    finally:
        await c.close()
        shutil.rmtree(base, ignore_errors=True)


def _caps(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {
            line.split(":")[0]: int(line.split()[1], 16)
            for line in f
            if line.startswith(("CapPrm:", "CapEff:", "CapAmb:", "CapBnd:"))
        }


async def test_a_delegate_without_capabilities_runs_tasks_as_task_users_through_the_launcher(
    setup: Setup,
) -> None:
    # The delegate holds nothing, not even in its bounding set.
    assert _caps(setup.delegate.pid) == dict.fromkeys(["CapPrm", "CapEff", "CapBnd", "CapAmb"], 0)
    data = setup.home / "data"
    targets = [
        "control:read:" + str(setup.base / "control"),
        f"delegate-environ:read:/proc/{setup.delegate.pid}/environ",
        f"delegate-mem:open:/proc/{setup.delegate.pid}/mem",
        f"delegate-ptrace:ptrace:{setup.delegate.pid}",
        "key:read:" + str(data / "delegate.key"),
        "spool:list:" + str(data / "spool"),
        "token-file:read:" + str(setup.token_file),
        "work-dir:list:" + str(setup.tasks),
        "launcher-environ:read:/proc/ppid/environ",
        "launcher-ptrace:ptrace:ppid",
    ]
    found = await _probe(setup.cluster, "nocaps", targets)
    # A child of the launcher, not of the delegate: it has the launcher's sandbox.
    assert _parent(found) == setup.launcher.pid
    assert found.pop("control") == "READ"
    assert found == dict.fromkeys(found, "denied") | {"env-token": "absent"}, found
    await setup.delegate.wait_event("tasks run as task users", isolation="task_users")
    assert list(setup.tasks.iterdir()) == []


async def test_a_timed_out_task_is_stopped_through_the_launcher_group_and_all(
    setup: Setup,
) -> None:
    c = setup.cluster
    pids = setup.base / "pids"
    pids.mkdir(mode=0o777)
    pids.chmod(0o1777)
    script = f"sleep 300 & echo $! > {pids}/bg; echo $$ > {pids}/leader; wait"
    res = await c.tether(
        "task", "run", "--selector", "nocaps", "--timeout", "2", "--", "bash", "-c", script
    )
    assert res.code != 0, res.stdout
    assert "timed out" in res.stdout + res.stderr
    for name in ("bg", "leader"):
        pid = int((pids / name).read_text())
        status = Path(f"/proc/{pid}/status")
        if status.exists():
            state = next(ln for ln in status.read_text().splitlines() if ln.startswith("State:"))
            assert "Z" in state.split()[1], (name, state)
    assert list(setup.tasks.iterdir()) == []
