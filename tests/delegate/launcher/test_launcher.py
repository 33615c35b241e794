"""The task launcher as a real root process, and the delegate's client of it.

The test is root (as CI is); it makes the accounts, starts ``tether-task-launcher`` on a
socket of its own, and connects as the delegate's user by taking that user's effective uid
for the one ``connect()`` call: ``SO_PEERCRED`` records the connecting process's effective
ids, so the launcher sees exactly what it would see from a delegate running as that user.
Everything lives under a directory every user may traverse, so a denial comes from the
launcher and the accounts, not from pytest's 0700 temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from delegate import cli as delegate_cli
from delegate.config import DelegateConfig, resolve
from delegate.launcher.protocol import Assembler, encode, parse_reply
from delegate.launcher.wire import receive, send
from delegate.run.isolation import IsolationError, TaskUser
from delegate.run.launcher_client import LauncherError, ThroughLauncher, fetch_pool
from delegate.run.process import Child
from tests.accounts import system_accounts
from tests.delegate.run.test_process import reap_stray, wait_gone
from tests.e2e.harness import BIN, Proc

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes accounts, runs the launcher"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd"),
]


@dataclass(frozen=True)
class Accounts:
    client: TaskUser  # the delegate's
    slots: tuple[TaskUser, ...]
    stranger: TaskUser  # neither the delegate's nor a slot's


def _user(name: str) -> TaskUser:
    entry = pwd.getpwnam(name)
    return TaskUser(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def accounts() -> Iterator[Accounts]:
    with system_accounts("tl", 4) as names:
        users = [_user(n) for n in names]
        yield Accounts(client=users[0], slots=(users[1], users[2]), stranger=users[3])


@dataclass
class Setup:
    accounts: Accounts
    base: Path
    work: Path
    socket: Path
    launcher: Proc

    def client(self) -> ThroughLauncher:
        return ThroughLauncher(
            self.socket, self.accounts.slots, connect=connect_as(self.accounts.client)
        )

    def task_dir(self, files: dict[str, str]) -> Path:
        """A task's directory as the delegate makes it: 0700, all of it the delegate's."""
        path = Path(tempfile.mkdtemp(prefix="task-", dir=self.work))
        for name, text in files.items():
            (path / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            (path / name).write_text(text)
            (path / name).chmod(0o600)
        client = self.accounts.client
        for folder, dirs, names in os.walk(path):
            for entry in (*dirs, *names):
                os.chown(Path(folder, entry), client.uid, client.gid)
        os.chown(path, client.uid, client.gid)
        return path


def connect_as(user: TaskUser):  # type: ignore[no-untyped-def]
    async def connect(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        os.setegid(user.gid)
        os.seteuid(user.uid)
        try:
            sock.connect(str(path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.seteuid(0)
            os.setegid(0)
        sock.setblocking(False)
        return sock

    return connect


@pytest.fixture
async def setup(accounts: Accounts) -> AsyncIterator[Setup]:
    base = Path(tempfile.mkdtemp(prefix="tether-launcher-", dir="/tmp"))
    base.chmod(0o755)
    work = base / "tasks"
    work.mkdir()
    os.chown(work, accounts.client.uid, accounts.client.gid)
    work.chmod(0o711)
    path = base / "launcher.sock"
    launcher = Proc(
        "launcher",
        [
            str(BIN / "tether-task-launcher"),
            "--socket", str(path),
            "--client-user", accounts.client.name,
            "--task-users", ",".join(u.name for u in accounts.slots),
            "--work-dir", str(work),
            "--log-format", "json",
        ],
    )  # fmt: skip
    await launcher.start()
    try:
        await launcher.wait_event("task launcher ready")
        yield Setup(accounts, base, work, path, launcher)
    finally:
        await launcher.stop()
        shutil.rmtree(base, ignore_errors=True)


async def output(child: Child) -> str:
    out = await asyncio.wait_for(child.stdout.reader.read(), 10)
    child.close()
    return out.decode()


async def ask(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> dict[str, Any]:
    await send(sock, encode(message), fds or [])
    got = await asyncio.wait_for(receive(sock, Assembler()), 10)
    assert got is not None, "the launcher hung up"
    for fd in got[1]:
        os.close(fd)
    return parse_reply(got[0])


PROBE = """
id -u; id -G; pwd
grep -E '^Cap(Prm|Eff|Amb):' /proc/self/status | tr -s '\\t' ' '
cat "$1" 2>/dev/null && echo "delegate-file: READ" || echo "delegate-file: denied"
echo "token=$TOKEN"
"""


async def test_a_task_runs_as_its_slots_user_holding_nothing_and_cannot_read_the_delegates_files(
    setup: Setup,
) -> None:
    slot = setup.accounts.slots[1]
    client = setup.accounts.client
    secret = setup.base / "delegate.key"  # a file of the delegate's own, as its key is
    secret.write_text("private\n")
    secret.chmod(0o600)
    os.chown(secret, client.uid, client.gid)
    task_dir = setup.task_dir({"script": PROBE, "sub/keep": ""})
    child = await setup.client().start(
        slot,
        ["/bin/sh", str(task_dir / "script"), str(secret)],
        task_dir=task_dir,
        cwd=task_dir / "sub",
        env={"PATH": "/usr/bin:/bin", "TOKEN": "for-this-task"},
    )
    lines = (await output(child)).splitlines()
    assert await asyncio.wait_for(child.proc.wait(), 10) == 0
    assert lines[:3] == [str(slot.uid), str(slot.gid), str(task_dir / "sub")]
    assert lines[3:6] == [
        "CapPrm: 0000000000000000",
        "CapEff: 0000000000000000",
        "CapAmb: 0000000000000000",
    ]
    assert lines[6:] == ["delegate-file: denied", "token=for-this-task"]
    # Handed over: the directory and what the delegate put in it are the slot user's now.
    assert {
        (p.stat().st_uid, p.stat().st_gid)
        for p in (task_dir, task_dir / "script", task_dir / "sub")
    } == {(slot.uid, slot.gid)}
    # Control: the same file, readable to its owner, so "denied" above is the switch.
    assert secret.read_text() == "private\n"
    events = [e for e in setup.launcher.events() if e.get("event") == "task started"]
    assert events
    assert "for-this-task" not in "\n".join(setup.launcher.stderr)


async def test_cancel_terminates_the_whole_group_and_the_exit_comes_back(setup: Setup) -> None:
    slot = setup.accounts.slots[0]
    task_dir = setup.task_dir({"script": "sleep 300 & echo $!; exec sleep 301\n"})
    child = await setup.client().start(
        slot, ["/bin/sh", str(task_dir / "script")], task_dir=task_dir, cwd=task_dir, env={}
    )
    background = int((await asyncio.wait_for(child.stdout.reader.readline(), 10)).decode())
    try:
        assert child.proc.signal_group(signal.SIGTERM)
        assert await asyncio.wait_for(child.proc.wait(), 10) == -signal.SIGTERM
        await wait_gone(background)
        # Over: a later signal is not sent, to a group id that may be someone else's.
        assert not child.proc.signal_group(signal.SIGKILL)
    finally:
        reap_stray(background)
        child.close()


async def test_a_task_whose_connection_closes_is_killed_and_its_slot_swept(setup: Setup) -> None:
    """A delegate that dies takes its tasks with it, as when it ran them itself."""
    task_dir = setup.task_dir({"script": "setsid sleep 302 & echo $!; exec sleep 303\n"})
    sock = await connect_as(setup.accounts.client)(setup.socket)
    handed = [os.open(task_dir, os.O_RDONLY), os.open(task_dir / "script", os.O_RDONLY)]
    start = {
        "id": 1, "op": "start", "slot": 0, "dir": task_dir.name, "cwd": ".",
        "argv": ["/bin/sh", str(task_dir / "script")], "env": {},
    }  # fmt: skip
    try:
        await send(sock, encode(start), handed)
        got = await asyncio.wait_for(receive(sock, Assembler()), 10)
    finally:
        for fd in handed:
            os.close(fd)
    assert got is not None
    reply, (out_r, err_r) = parse_reply(got[0]), got[1]
    os.close(err_r)
    with os.fdopen(out_r, "rb") as out:
        escaped = int(await asyncio.to_thread(out.readline))
    try:
        sock.close()  # the delegate, gone
        await wait_gone(reply["pid"])
        await wait_gone(escaped)  # outside the group: the slot's sweep got it
        await setup.launcher.wait_event("connection closed with its task running: killed", slot=0)
    finally:
        reap_stray(escaped)
    # The slot is free again.
    again = setup.task_dir({"script": "echo again\n"})
    second = await setup.client().start(
        setup.accounts.slots[0],
        ["/bin/sh", str(again / "script")],
        task_dir=again,
        cwd=again,
        env={},
    )
    assert await output(second) == "again\n"
    assert await asyncio.wait_for(second.proc.wait(), 10) == 0


async def test_sweep_kills_the_slot_users_processes_and_empties_its_directory(setup: Setup) -> None:
    slot = setup.accounts.slots[1]
    client = setup.client()
    task_dir = setup.task_dir(
        {
            "script": "setsid sleep 304 </dev/null >/dev/null 2>&1 & echo $!\n"
            "mkdir -p d/e; touch d/e/f; chmod 000 d\n"
        }
    )
    child = await client.start(
        slot, ["/bin/sh", str(task_dir / "script")], task_dir=task_dir, cwd=task_dir, env={}
    )
    escaped = int(await output(child))
    await asyncio.wait_for(child.proc.wait(), 10)
    try:
        assert await client.sweep(slot, task_dir)
        await wait_gone(escaped)
        assert list(task_dir.iterdir()) == []
    finally:
        reap_stray(escaped)


async def test_a_busy_slot_is_neither_started_twice_nor_swept(setup: Setup) -> None:
    slot = setup.accounts.slots[0]
    client = setup.client()
    first = setup.task_dir({"script": "exec sleep 305\n"})
    child = await client.start(
        slot, ["/bin/sh", str(first / "script")], task_dir=first, cwd=first, env={}
    )
    try:
        second = setup.task_dir({"script": "echo ran\n"})
        with pytest.raises(LauncherError, match="slot 0 is running a task"):
            await client.start(
                slot, ["/bin/sh", str(second / "script")], task_dir=second, cwd=second, env={}
            )
        assert not await client.sweep(slot, None)
        assert (second / "script").stat().st_uid == setup.accounts.client.uid, "nothing handed"
    finally:
        child.proc.signal_group(signal.SIGKILL)
        await asyncio.wait_for(child.proc.wait(), 10)
        child.close()


async def test_requests_outside_the_pool_the_directory_or_the_delegates_files_are_refused(
    setup: Setup,
) -> None:
    task_dir = setup.task_dir({"script": "echo ran > ran\n"})
    other = setup.task_dir({})
    # A root file the delegate could open (world-readable, as /etc/passwd is): never given.
    rootfile = setup.work / "root-file"
    rootfile.write_text("root's\n")
    rootfile.chmod(0o644)
    good = {
        "id": 1,
        "op": "start",
        "slot": 0,
        "dir": task_dir.name,
        "cwd": ".",
        "argv": ["/bin/sh", "script"],
        "env": {},
    }
    cases: list[tuple[dict[str, Any], list[Path], str]] = [
        ({**good, "slot": 2}, [task_dir], "slot must be a whole number from 0 to 1"),
        ({**good, "cwd": "/root"}, [task_dir], "cwd must lie inside the task's directory"),
        ({**good, "cwd": "../" + other.name}, [task_dir], "cwd must lie inside"),
        ({**good, "dir": "../tasks"}, [task_dir], "dir must name a task directory"),
        ({**good, "dir": "missing"}, [task_dir], "no task directory missing"),
        (good, [other], "the first descriptor is not the task's directory"),
        (good, [task_dir, rootfile], "only the delegate's own files are handed to a task"),
        ({**good, "uid": 0}, [task_dir], "unknown fields for start: uid"),
        ({"id": 1, "op": "exec", "argv": ["id"]}, [], "unknown op 'exec'"),
    ]
    connect = connect_as(setup.accounts.client)
    for message, paths, reason in cases:
        sock = await connect(setup.socket)
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            reply = await ask(sock, message, fds)
        finally:
            for fd in fds:
                os.close(fd)
            sock.close()
        assert reply["ok"] is False, message
        assert reply["error"].startswith(reason), (message, reply)
    # Nothing was handed over, nothing ran.
    assert rootfile.stat().st_uid == 0
    assert (task_dir / "script").stat().st_uid == setup.accounts.client.uid
    assert not (task_dir / "ran").exists()


async def test_a_peer_of_another_uid_is_refused_even_when_it_reaches_the_socket(
    setup: Setup,
) -> None:
    # The socket is the delegate's user's, 0600: another user cannot even connect.
    with pytest.raises(PermissionError):
        await connect_as(setup.accounts.stranger)(setup.socket)
    # Root can (it passes file modes), and so could anyone if the mode were loosened: the
    # peer's uid, as the kernel took it at connect, is what decides.
    setup.socket.chmod(0o666)
    for user in (setup.accounts.stranger, TaskUser("root", 0, 0), setup.accounts.slots[0]):
        sock = await (connect_as(user)(setup.socket) if user.uid else _root_connect(setup.socket))
        # Its first request is answered with the refusal, unread, and the launcher hangs up.
        try:
            reply = await ask(sock, {"id": 1, "op": "pool"})
            assert await asyncio.wait_for(receive(sock, Assembler()), 10) is None
        finally:
            sock.close()
        assert reply == {
            "id": None,
            "ok": False,
            "error": f"uid {user.uid} may not use this launcher",
        }
    await setup.launcher.wait_event("connection refused", peer_uid=setup.accounts.stranger.uid)


async def _root_connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(str(path))
    sock.setblocking(False)
    return sock


async def test_the_pool_is_the_launchers_accounts_and_work_directory(setup: Setup) -> None:
    client = setup.accounts.client
    # Blocking, and in this thread: a worker thread's first import, as the client's uid,
    # could not read this interpreter's files.
    os.setegid(client.gid)
    os.seteuid(client.uid)
    try:
        users, work = fetch_pool(setup.socket)
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert users == setup.accounts.slots
    assert work == setup.work
    with pytest.raises(LauncherError, match="uid 0 may not use this launcher"):
        fetch_pool(setup.socket)  # as root


def test_the_launcher_refuses_to_run_as_configured_wrongly(
    accounts: Accounts, tmp_path: Path
) -> None:
    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [
            str(BIN / "tether-task-launcher"),
            "--socket",
            str(tmp_path / "s"),
            "--work-dir",
            str(tmp_path),
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)

    slots = ",".join(u.name for u in accounts.slots)
    cases = [
        (("--client-user", accounts.client.name, "--task-users", "root"), "is root"),
        (
            (
                "--client-user",
                accounts.client.name,
                "--task-users",
                f"{slots},{accounts.client.name}",
            ),
            "this delegate's own user",
        ),
        (("--client-user", "root", "--task-users", slots), "must not be root"),
        (
            ("--client-user", accounts.client.name, "--task-users", "no-such-user-x1"),
            "does not exist",
        ),
    ]
    for args, reason in cases:
        proc = launch(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: "), proc.stderr
        assert reason in proc.stderr, proc.stderr
        assert not (tmp_path / "s").exists()


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
async def test_the_launcher_serves_the_socket_systemd_passes_it(accounts: Accounts) -> None:
    """As tether-task-launcher.socket starts it: no --socket, the listening socket as fd 3
    (LISTEN_FDS, LISTEN_PID), the service started by the first connection."""
    base = Path(tempfile.mkdtemp(prefix="tether-launcher-", dir="/tmp"))
    base.chmod(0o755)
    path = base / "activated.sock"
    activator = Proc(
        "activate",
        [
            "systemd-socket-activate", "--seqpacket", "-l", str(path),
            str(BIN / "tether-task-launcher"),
            "--client-user", accounts.client.name,
            "--task-users", ",".join(u.name for u in accounts.slots),
            "--work-dir", str(base), "--log-format", "json",
        ],
    )  # fmt: skip
    await activator.start()
    try:
        await activator.wait_until(
            lambda: any("Listening on" in s for s in activator.stderr), "listening"
        )
        path.chmod(0o666)  # systemd's unit sets SocketUser=; here the file is root's
        client = accounts.client
        os.setegid(client.gid)
        os.seteuid(client.uid)
        try:
            users, work = fetch_pool(path)
        finally:
            os.seteuid(0)
            os.setegid(0)
        assert users == accounts.slots
        assert work == base
        await activator.wait_event("task launcher ready")
    finally:
        await activator.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_a_delegate_given_the_launcher_takes_its_slots_or_says_why_not(
    setup: Setup, tmp_path: Path
) -> None:
    """The delegate's choice at start (delegate/cli.py): the launcher's task users, checked
    as accounts named in its own configuration are; a mismatch is a configuration error,
    a launcher it cannot reach one worth a restart."""

    def config(**flags: object) -> DelegateConfig:
        given = {"manager_url": "https://m:1", "token": "tdt_x", "max_tasks": 2}
        return resolve(given | flags, {}, None)

    def choose(cfg: DelegateConfig) -> object:
        client = setup.accounts.client
        os.setegid(client.gid)
        os.seteuid(client.uid)
        try:
            return delegate_cli._switcher(cfg)
        finally:
            os.seteuid(0)
            os.setegid(0)

    chosen = choose(config(launcher_socket=str(setup.socket), work_dir=str(setup.work)))
    assert isinstance(chosen, ThroughLauncher)
    assert chosen.users == setup.accounts.slots
    with pytest.raises(IsolationError, match="the task launcher's work directory is"):
        choose(config(launcher_socket=str(setup.socket), work_dir=str(tmp_path)))
    with pytest.raises(IsolationError, match="the task launcher has 2 slots; 3 tasks"):
        choose(config(launcher_socket=str(setup.socket), work_dir=str(setup.work), max_tasks=3))
    with pytest.raises(LauncherError, match="cannot reach the task launcher at"):
        choose(config(launcher_socket=str(setup.base / "missing.sock"), work_dir=str(setup.work)))
