"""Tasks run apart from the delegate: a real manager, a real delegate that runs its tasks as
task users, and tasks that try every way to the delegate's credentials and to each other.

Needs root (to create the task users and to start a delegate that switches users), as CI
runs. Everything the tasks try to read sits under a directory every user may traverse, so
a denial comes from the delegate's own modes and users, not from pytest's 0700 temp dir;
a world-readable control file there proves the task could get that far.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.accounts import system_accounts
from tests.e2e.harness import Cluster, Proc

REPO = Path(__file__).resolve().parents[2]
PYTHON = Path("/usr/bin/python3")  # the system's: task users cannot reach a venv under /root
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes task users"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd"),
    pytest.mark.skipif(not PYTHON.is_file(), reason="the probe needs /usr/bin/python3"),
    pytest.mark.asyncio(loop_scope="module"),
]

# Prints one line per attempt: "NAME: READ" or "NAME: denied (errno)". Each argument is
# NAME:KIND:TARGET; "ppid" in TARGET is the $PPID of the task's script: the parent of the
# session the delegate started the script in, i.e. the delegate.
PROBE = r"""
import ctypes, os, sys

def task_ppid():
    with open(f"/proc/{os.getsid(0)}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

print(f"task-ppid: {task_ppid()}", flush=True)
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith(("CapPrm:", "CapEff:", "CapAmb:")):
            print(f"{line.split(':')[0]}: {int(line.split()[1], 16):x}", flush=True)

def pid_of(target):
    return task_ppid() if target == "ppid" else int(target)

def read(target):
    path = target.replace("/proc/ppid/", f"/proc/{task_ppid()}/", 1)
    with open(path, "rb") as f:
        f.read(1)

def opened(target):
    open(target, "rb").close()

def listing(target):
    os.listdir(target)

def ptrace(target):
    pid = pid_of(target)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.waitpid(pid, 0x40000000)  # __WALL: until it is stopped, so the detach takes
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH

for spec in sys.argv[1:]:
    name, kind, target = spec.split(":", 2)
    try:
        {"read": read, "open": opened, "list": listing, "ptrace": ptrace}[kind](target)
    except OSError as exc:
        print(f"{name}: denied ({exc.errno})", flush=True)
    else:
        print(f"{name}: READ", flush=True)
"""


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-isolation-", dir="/tmp"))
    path.chmod(0o755)
    (path / "probe.py").write_text(PROBE)
    (path / "probe.py").chmod(0o644)
    (path / "control").write_text("anyone may read this\n")
    (path / "control").chmod(0o644)
    coord = path / "coord"
    coord.mkdir()
    coord.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def task_users() -> Iterator[list[str]]:
    # Two slots of the root delegate; a slot and the account of the capability delegate.
    with system_accounts("tt", 4) as names:
        yield names


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def apart(base: Path, task_users: list[str]) -> AsyncIterator[tuple[Cluster, Proc]]:
    c = Cluster(root=base / "cluster")
    c.root.mkdir()
    c.root.chmod(0o755)
    token_file = base / "delegate-token"
    try:
        await c.start_manager()
        token = await c.token("apart")
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        delegate = await c.start_delegate(
            "apart",
            "apart",
            token=token,  # in its environment as well: what /proc/PID/environ would show
            shared_user=False,
            extra=(
                "--task-users",
                ",".join(task_users[:2]),
                "--max-tasks",
                "2",
                "--work-dir",
                str(base / "tasks"),
                "--token-file",
                str(token_file),
            ),
        )
        yield c, delegate
    finally:
        await c.close()


def _targets(c: Cluster, delegate: Proc, base: Path) -> list[str]:
    data = c.root / "delegate-apart"
    return [
        "control:read:" + str(base / "control"),
        "ppid-environ:read:/proc/ppid/environ",
        f"pid-environ:read:/proc/{delegate.pid}/environ",
        f"pid-mem:open:/proc/{delegate.pid}/mem",
        f"ptrace:ptrace:{delegate.pid}",
        "ppid-ptrace:ptrace:ppid",
        "key:read:" + str(data / "delegate.key"),
        "data-dir:list:" + str(data),
        "spool:list:" + str(data / "spool"),
        "token-file:read:" + str(base / "delegate-token"),
        "work-dir:list:" + str(base / "tasks"),
    ]


async def _probe(c: Cluster, selector: str, targets: list[str]) -> dict[str, str]:
    script = (
        'case " $(env) " in *TETHER_TOKEN*) echo "env-token: PRESENT";; '
        '*) echo "env-token: absent";; esac; '
        f"exec {PYTHON} -I {c.root.parent / 'probe.py'} " + " ".join(targets)
    )
    res = await c.tether("task", "run", "--selector", selector, "--", "bash", "-c", script)
    assert res.code == 0, res.stdout + res.stderr
    found = {}
    for line in res.stdout.splitlines():
        name, sep, verdict = line.partition(": ")
        if sep:
            found[name] = verdict.split()[0]
    return found


def _parent(found: dict[str, str], *, task_user: bool = True) -> int:
    """The task's $PPID, taken out of ``found`` with the task's capability sets, which must
    be empty for a task user: a task never holds what the delegate holds."""
    caps = {name: found.pop(name) for name in ("CapPrm", "CapEff", "CapAmb")}
    if task_user:
        assert caps == dict.fromkeys(caps, "0"), caps
    return int(found.pop("task-ppid"))


async def test_a_task_cannot_reach_the_delegates_token_key_spool_or_memory(
    apart: tuple[Cluster, Proc], base: Path
) -> None:
    c, delegate = apart
    targets = _targets(c, delegate, base)
    found = await _probe(c, "apart", targets)
    assert _parent(found) == delegate.pid
    names = [t.split(":")[0] for t in targets]
    assert set(found) == {*names, "env-token"}, found
    assert found.pop("control") == "READ", "the probe could not even reach its control file"
    assert found == dict.fromkeys(found, "denied") | {"env-token": "absent"}, found
    # The delegate's own files: its user's alone.
    data = c.root / "delegate-apart"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (data, data / "spool")}
    assert modes == {data: 0o700, data / "spool": 0o700}
    assert stat.S_IMODE((data / "delegate.key").stat().st_mode) == 0o600
    # It said so at start and at registration, and the manager shows it.
    await delegate.wait_event("tasks run as task users", isolation="task_users")
    listed = await c.tether("delegate", "list")
    assert "task_users" in listed.stdout, listed.stdout


async def test_the_same_probe_reads_everything_from_a_shared_user_delegate(
    apart: tuple[Cluster, Proc], base: Path
) -> None:
    """The control for the test above: run as the delegate's own user (root here), the
    same attempts succeed, so "denied" there is the isolation, not a broken probe."""
    c, _ = apart
    shared = await c.start_delegate("shared", "shared")
    data = c.root / "delegate-shared"
    targets = [
        "ppid-environ:read:/proc/ppid/environ",
        f"pid-mem:open:/proc/{shared.pid}/mem",
        "ppid-ptrace:ptrace:ppid",
        "key:read:" + str(data / "delegate.key"),
        "spool:list:" + str(data / "spool"),
    ]
    found = await _probe(c, "shared", targets)
    assert _parent(found, task_user=False) == shared.pid
    assert found == {
        "env-token": "absent",  # the environment the task is given is built, not inherited
        "ppid-environ": "READ",
        "pid-mem": "READ",
        "ppid-ptrace": "READ",
        "key": "READ",
        "spool": "READ",
    }
    listed = await c.tether("delegate", "list")
    row = next(line for line in listed.stdout.splitlines() if " shared " in line)
    assert "shared_user" in row


async def test_two_running_tasks_cannot_read_each_others_secrets(
    apart: tuple[Cluster, Proc], base: Path, tmp_path: Path
) -> None:
    c, _ = apart
    coord = base / "coord" / secrets.token_hex(4)
    coord.mkdir()
    coord.chmod(0o1777)
    key_file = tmp_path / "id"
    key_file.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + secrets.token_hex(32)
        + "\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    created = await c.tether(
        "secret", "create", "iso-key", "--type", "ssh_key", "--from-file", str(key_file),
        "--field", "user=deployer",
    )  # fmt: skip
    assert created.code == 0, created.stderr
    # A: publishes where its secrets are, then stays running until B has tried them. The
    # note made readable to B whatever umask the delegate (so its tasks) inherited: a test
    # run in-process before this one (manager.cli.main) leaves the worker's at 077, and B,
    # unable to read it, probed empty paths (ENOENT, and its own directory listed "READ").
    first = (
        f"umask 022; "
        f'printf "%s\\n" "$TETHER_SSH_ISO_KEY_KEY_FILE" "$TETHER_OUTPUT" "$$" > {coord}/a.tmp; '
        f"mv {coord}/a.tmp {coord}/a; "
        f'cat "$TETHER_SSH_ISO_KEY_KEY_FILE" > /dev/null && echo "own-key: READ"; '
        f"until [ -e {coord}/b-done ]; do sleep 0.05; done"
    )
    # B: waits for A's paths, tries them, and lets A finish.
    probe = f"{PYTHON} -I {base / 'probe.py'}"
    second = (
        f"until [ -e {coord}/a ]; do sleep 0.05; done; "
        f"{{ read -r key; read -r out; read -r pid; }} < {coord}/a; "
        f'{probe} "other-key:read:$key" "other-output:read:$out" '
        f'"other-dir:list:$(dirname "$out")" "other-environ:read:/proc/$pid/environ" '
        f'"other-ptrace:ptrace:$pid"; '
        f"touch {coord}/b-done"
    )
    common = ("task", "run", "--selector", "apart", "--timeout", "60", "--credential", "iso-key")
    a, b = await asyncio.gather(
        c.tether(*common, "--secret-env", "A_SECRET=only-for-a", "--", "bash", "-c", first),
        c.tether(*common, "--", "bash", "-c", second),
    )
    assert a.code == 0, a.stdout + a.stderr
    assert b.code == 0, b.stdout + b.stderr
    assert "own-key: READ" in a.stdout
    verdicts = {
        line.split(": ")[0]: line.split(": ")[1].split()[0]
        for line in b.stdout.splitlines()
        if line.startswith("other-")
    }
    assert verdicts == dict.fromkeys(
        ["other-key", "other-output", "other-dir", "other-environ", "other-ptrace"], "denied"
    ), b.stdout
    # Both slots' directories are gone once the tasks ended.
    assert list((base / "tasks").iterdir()) == []


async def test_a_process_that_left_the_tasks_group_dies_with_the_task(
    apart: tuple[Cluster, Proc],
) -> None:
    """Else it would live on as the slot's user and read the next task's secrets there."""
    c, _ = apart
    script = 'setsid sleep 300 </dev/null >/dev/null 2>&1 & echo "ESCAPED=$!" >> "$TETHER_OUTPUT"'
    res = await c.tether(
        "--output", "json", "task", "run", "--selector", "apart", "--", "bash", "-c", script
    )
    assert res.code == 0, res.stderr
    end = json.loads(res.stdout.splitlines()[-1])
    pid = int(end["task"]["outputs"]["ESCAPED"])
    status = Path(f"/proc/{pid}/status")
    # Killed before the result was sent; a zombie is dead, only not yet reaped by init.
    if status.exists():
        state = next(ln for ln in status.read_text().splitlines() if ln.startswith("State:"))
        assert "Z" in state.split()[1], state


async def test_a_delegate_with_only_the_units_capabilities_isolates_its_tasks_too(
    apart: tuple[Cluster, Proc], base: Path, task_users: list[str]
) -> None:
    """As the systemd unit runs it: an unprivileged user holding CAP_SETUID, CAP_SETGID,
    CAP_CHOWN and CAP_KILL as ambient capabilities, bounded to those, no_new_privs set.
    Its task must hold none of them, and reach none of the delegate's files."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to start a delegate with ambient capabilities")
    c, _ = apart
    slot, owner = task_users[2], task_users[3]
    home = base / "capd"
    home.mkdir()
    tasks = base / "capd-tasks"
    tasks.mkdir()
    token_file, ca = home / "token", home / "ca.pem"
    token_file.write_text(await c.token("capd") + "\n")
    token_file.chmod(0o600)
    shutil.copyfile(c.ca_file, ca)
    for path in (home, tasks, token_file, ca):
        shutil.chown(path, owner, owner)
    home.chmod(0o700)
    caps = "+setuid,+setgid,+chown,+kill"
    # The system's interpreter on this checkout and its virtualenv's packages: the
    # virtualenv's own interpreter may sit where the unprivileged user cannot reach.
    site = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    boot = (
        f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(site)!r}]; "
        "from delegate.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [
        setpriv, f"--reuid={owner}", f"--regid={owner}", "--clear-groups",
        f"--inh-caps={caps}", f"--ambient-caps={caps}",
        f"--bounding-set=-all,{caps}", "--no-new-privs", "--",
        str(PYTHON), "-c", boot, "run", "--manager-url", c.url, "--ca-file", str(ca),
        "--token-file", str(token_file), "--name", "capd", "--selector", "capd",
        "--data-dir", str(home / "data"), "--work-dir", str(tasks), "--max-tasks", "1",
        "--task-users", slot, "--time-scale", str(c.time_scale), "--log-format", "json",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    delegate = Proc("delegate-capd", argv, env=env)
    delegate.env = env
    await delegate.start()
    c.procs.append(delegate)
    await delegate.wait_event("channel mode", mode="stream")
    data = home / "data"
    targets = [
        "control:read:" + str(base / "control"),
        "ppid-environ:read:/proc/ppid/environ",
        "pid-mem:open:/proc/ppid/mem",
        "ppid-ptrace:ptrace:ppid",
        "key:read:" + str(data / "delegate.key"),
        "spool:list:" + str(data / "spool"),
        "token-file:read:" + str(token_file),
        "work-dir:list:" + str(tasks),
    ]
    found = await _probe(c, "capd", targets)
    assert _parent(found) == delegate.pid
    assert found.pop("control") == "READ"
    assert found == dict.fromkeys(found, "denied") | {"env-token": "absent"}, found
    assert stat.S_IMODE(tasks.stat().st_mode) == 0o711
    assert list(tasks.iterdir()) == []
