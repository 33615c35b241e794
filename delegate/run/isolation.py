"""Who a task runs as: an OS user of its own, one per slot, never the delegate's user.

A task that runs as the delegate's user can read everything the delegate can: its token
(``/proc/$PPID/environ``, the token file), its private key, its spool, and its memory
(ptrace). A small pool of task users, one per slot (``tether-task-0`` .. ``N-1``), closes
that, and since no two running tasks share a slot, concurrent tasks cannot read each other's
files or environment either. Starting a child as another user needs root or CAP_SETUID,
CAP_SETGID (the switch), CAP_CHOWN (handing the task its private directory) and CAP_KILL
(signalling the task's process group).

A task's processes may outlive it (``setsid``, a daemon): before a slot is used again, every
process of its user is killed and the task's directory emptied, by :func:`sweep`, which runs
as that user so that it can touch nothing else.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NEEDED_CAPABILITIES",
    "IsolationError",
    "TaskUser",
    "UserPool",
    "harden_process",
    "lookup_users",
    "missing_capabilities",
    "pool_names",
    "sweep",
]

# linux/capability.h: what starting and stopping a task as another user takes.
NEEDED_CAPABILITIES = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7}
# linux/prctl.h
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

# Run as the slot's user, so kill(-1) reaches exactly that user's processes (never the
# delegate's, never another slot's), and the removal can only remove what the task made.
# A task may have made its own files unreadable; the chmod gives them back to the removal.
_SWEEP = """
kill -9 -1 2>/dev/null
[ -n "$1" ] || exit 0
chmod -R u+rwx -- "$1" 2>/dev/null
find "$1" -mindepth 1 -delete
"""


class IsolationError(Exception):
    """Tasks cannot be isolated as configured; the delegate exits with status 2 and this."""


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int


def pool_names(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(count))


def lookup_users(names: Sequence[str], *, own_uid: int) -> tuple[TaskUser, ...]:
    """The accounts named, each checked to be a distinct, unprivileged user other than the
    delegate's own; IsolationError naming the first one that is not."""
    users: list[TaskUser] = []
    seen: dict[int, str] = {}
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise IsolationError(
                f"task user {name} does not exist: create it (install-service does), "
                "or pass --shared-user to run tasks as this delegate's own user"
            ) from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise IsolationError(f"task user {name} is root or in root's group; it must not be")
        if entry.pw_uid == own_uid:
            raise IsolationError(f"task user {name} is this delegate's own user; it must not be")
        if entry.pw_uid in seen:
            raise IsolationError(
                f"task users {seen[entry.pw_uid]} and {name} are the same account (uid"
                f" {entry.pw_uid}); each slot needs its own"
            )
        seen[entry.pw_uid] = name
        users.append(TaskUser(name, entry.pw_uid, entry.pw_gid))
    return tuple(users)


def missing_capabilities(status: str) -> list[str]:
    """What this process lacks to start tasks as other users, from /proc/self/status.

    Root counts only with the capabilities: root in a container often lacks CAP_SETUID.
    """
    effective = 0
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
    return [name for name, bit in NEEDED_CAPABILITIES.items() if not effective >> bit & 1]


class UserPool:
    """The task users, handed out one per running task: the lowest free slot first, so a
    delegate running one task at a time always uses the same account."""

    def __init__(self, users: Iterable[TaskUser]) -> None:
        self.users = tuple(users)
        self._busy: set[TaskUser] = set()

    def take(self) -> TaskUser:
        for user in self.users:
            if user not in self._busy:
                self._busy.add(user)
                return user
        # The agent runs at most max_tasks tasks and the pool has as many users.
        raise IsolationError(f"all {len(self.users)} task users are busy")

    def give_back(self, user: TaskUser) -> None:
        self._busy.remove(user)

    @property
    def free(self) -> int:
        return len(self.users) - len(self._busy)


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def harden_process(*, task_users: bool) -> None:
    """Keep this process's memory and /proc entry (environ, mem) from same-user processes,
    and, when tasks run as other users, keep capabilities from reaching any child.

    Not dumpable: /proc/<pid>/environ and mem, and ptrace, then need CAP_SYS_PTRACE, even for
    a process of the delegate's own user. A capability held as *ambient* (systemd's
    AmbientCapabilities=) would pass through exec to every child, a task included, and a
    switch between two non-root users does not drop it: it is cleared here, before any
    child exists. No new privileges: no child gains any through a setuid or file-capability
    program either.
    """
    _prctl(_PR_SET_DUMPABLE, 0)
    if task_users:
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


async def sweep(user: TaskUser, directory: Path | None) -> bool:
    """Kill every process of ``user``, then empty ``directory`` (when given), as ``user``.

    True when it went through; the directory may then be removed by its parent's owner.
    """
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        _SWEEP,
        "sweep",
        str(directory) if directory is not None else "",
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        user=user.uid,
        group=user.gid,
        extra_groups=[],
    )
    # Shielded: a task cancelled while its slot is swept must not leave a half-swept slot.
    return await asyncio.shield(proc.wait()) == 0
