"""How a task's process comes to run as its slot's user: switched in this process (the
delegate runs as root, by hand), or by the task launcher (the installed service, where the
delegate holds no capability at all; delegate/run/launcher_client.py).

Either way the same three things happen, in this order, and only for a slot's user: the
task's directory (made by the delegate, so all of it its own) is handed to the user, the
program starts as the user in a process group of its own, and once the task is over every
process of the user is killed and the directory emptied (:func:`isolation.sweep`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from delegate.run import isolation
from delegate.run.isolation import TaskUser
from delegate.run.process import Child, spawn

__all__ = ["InProcess", "Switcher", "hand_over"]


class Switcher(Protocol):
    @property
    def users(self) -> tuple[TaskUser, ...]:
        """The slots' users, in slot order."""
        ...

    async def start(
        self,
        user: TaskUser,
        argv: Sequence[str],
        *,
        task_dir: Path,
        cwd: Path,
        env: Mapping[str, str],
    ) -> Child:
        """Hand ``task_dir`` to ``user``, then start ``argv`` as ``user`` in ``cwd``.

        ``OSError`` when it cannot start (its ``strerror`` says why).
        """
        ...

    async def sweep(self, user: TaskUser, directory: Path | None) -> bool:
        """Kill every process of ``user``, empty ``directory``; True when it went through."""
        ...


def hand_over(task_dir: Path, user: TaskUser) -> None:
    """Make everything in the task's directory (all of it made by the delegate, just now,
    so no link among it) the task user's, modes unchanged: 0700 and 0600."""
    for folder, dirs, files in os.walk(task_dir):
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)
    os.chown(task_dir, user.uid, user.gid, follow_symlinks=False)


class InProcess:
    """This process switches users itself: it is root, or holds the capabilities
    (:data:`isolation.NEEDED_CAPABILITIES`)."""

    def __init__(self, users: Sequence[TaskUser]) -> None:
        self._users = tuple(users)

    @property
    def users(self) -> tuple[TaskUser, ...]:
        return self._users

    async def start(
        self,
        user: TaskUser,
        argv: Sequence[str],
        *,
        task_dir: Path,
        cwd: Path,
        env: Mapping[str, str],
    ) -> Child:
        await asyncio.to_thread(hand_over, task_dir, user)
        return await spawn(argv, cwd=cwd, env=env, user=user)

    async def sweep(self, user: TaskUser, directory: Path | None) -> bool:
        return await isolation.sweep(user, directory)
