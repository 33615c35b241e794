"""A shell task's private directory: its script, its empty ``$TETHER_OUTPUT`` file and its
secret files, made before the task and taken away after it.

Making and removing a directory and two files costs six metadata operations per task, each
allocating or freeing an inode or a block; on an ext4 disk mounted with ``discard`` they were
the largest part of the delegate's own time per short task (docs/benchmarks.md). So a
directory whose task ran as the delegate's own user, and left nothing but the two files it
was given, unchanged, is kept for a later task: both files are emptied when the task ends,
and the next task's script is written into the same file.

Why keeping one is safe: such a task ran with the delegate's own rights, so it could already
reach every directory of the work root; keeping its directory gives a later task's process
nothing it could not reach anyway. What a task can change in its directory is checked before
the directory is kept: any other entry (a secret file, ``TMPDIR`` files), a file replaced,
linked elsewhere or made readable to others, or the directory's own mode or owner changed,
and the directory is removed as before. Directories of tasks run as a task user (a slot) are
never kept: the slot's sweep removes them with the user's own rights.

Kept directories hold two empty files, and nothing of the tasks they served;
:meth:`TaskDirs.close` removes them when the delegate stops, and a delegate killed before
that clears them at its next start with the rest of the work root.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TaskDir", "TaskDirs"]

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OWN_FILES = frozenset({"script", "output"})


@dataclass(eq=False)
class TaskDir:
    """One task's directory. ``output_fd`` reads ``$TETHER_OUTPUT`` afterwards: once the
    file is a task user's, the delegate may have no right to open it (it holds no
    CAP_DAC_*)."""

    task_dir: Path
    script: Path
    output_file: Path
    output_fd: int
    cwd: Path
    file_env: dict[str, str] = field(default_factory=dict)
    # Why the task cannot run (its working_dir); the directory exists all the same.
    error: str | None = None
    # Kept directories only: the script's file, written again for each task, and what the
    # directory and its two files were when made (delegate.run.taskdirs._unchanged).
    script_fd: int | None = None
    identity: tuple[tuple[int, int, int], ...] = ()


class TaskDirs:
    """The task directories of one work root, keeping up to ``keep`` of them between tasks
    run as the delegate's own user (0 keeps none)."""

    def __init__(self, work_root: Path, keep: int) -> None:
        self.work_root = work_root
        self._keep = keep
        self._kept: list[TaskDir] = []

    def has_kept(self) -> bool:
        """A kept directory is ready: :meth:`make` then writes in place, cheap enough to run
        on the event loop's thread rather than in a worker's."""
        return bool(self._kept)

    def make(
        self,
        script: bytes,
        secret_files: Mapping[str, bytes],
        working_dir: str | None,
        *,
        reuse: bool,
    ) -> TaskDir:
        """The task's directory with its script, its empty output file and its secret files
        (variable -> content, each 0600 under ``secrets/``). A kept one when ``reuse`` and one
        is free. On an error before it is returned, nothing is left behind."""
        made = self._take(script) if reuse else None
        if made is None:
            made = self._fresh(script, reuse=reuse)
        try:
            made.file_env = _write_secret_files(made.task_dir, secret_files)
            cwd = _working_dir(made.task_dir, working_dir)
        except BaseException:
            self._discard(made)
            raise
        if isinstance(cwd, str):
            made.error = cwd
        else:
            made.cwd = cwd
        return made

    def release(self, made: TaskDir) -> bool:
        """After a task run as the delegate's own user: keep ``made`` when it holds only its
        own two files, unchanged, and a place is free; else remove its own files. False:
        the task left more behind, for :meth:`remove` (a tree walk, for a worker thread)."""
        if made.script_fd is not None and len(self._kept) < self._keep and _unchanged(made):
            try:
                # Nothing of a task stays at rest after it (tests/e2e/test_sealed_at_rest.py).
                os.ftruncate(made.script_fd, 0)
                if os.fstat(made.output_fd).st_size:
                    os.ftruncate(made.output_fd, 0)
            except OSError:
                pass
            else:
                made.file_env, made.error, made.cwd = {}, None, made.task_dir
                self._kept.append(made)
                return True
        _close(made)
        return _remove_own_files(made)

    def remove(self, made: TaskDir) -> None:
        """Remove ``made`` and everything in it."""
        _close(made)
        shutil.rmtree(made.task_dir, ignore_errors=True)

    def forget(self, made: TaskDir) -> None:
        """Let go of ``made``'s descriptors without touching its files (a slot's sweep
        removes them)."""
        _close(made)

    def close(self) -> None:
        """Remove every kept directory (the delegate is stopping)."""
        kept, self._kept = self._kept, []
        for made in kept:
            self._discard(made)

    def _take(self, script: bytes) -> TaskDir | None:
        while self._kept:
            made = self._kept.pop()
            assert made.script_fd is not None
            try:
                os.pwrite(made.script_fd, script, 0)
                os.ftruncate(made.script_fd, len(script))
            except OSError:
                self._discard(made)
                continue
            return made
        return None

    def _fresh(self, script: bytes, *, reuse: bool) -> TaskDir:
        self.work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdtemp makes the directory 0700: the script and its output file are the task's.
        task_dir = Path(tempfile.mkdtemp(prefix="task-", dir=self.work_root))
        script_fd = output_fd = None
        try:
            script_path, output_file = task_dir / "script", task_dir / "output"
            script_fd = os.open(
                script_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            os.write(script_fd, script)
            output_fd = os.open(
                output_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            made = TaskDir(task_dir, script_path, output_file, output_fd, task_dir)
            if reuse:
                made.script_fd = script_fd
                made.identity = _identity(task_dir, script_fd, output_fd)
            else:
                os.close(script_fd)
            return made
        except BaseException:
            for fd in (script_fd, output_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            shutil.rmtree(task_dir, ignore_errors=True)
            raise

    def _discard(self, made: TaskDir) -> None:
        _close(made)
        if not _remove_own_files(made):
            shutil.rmtree(made.task_dir, ignore_errors=True)


def _remove_own_files(made: TaskDir) -> bool:
    """Remove ``made`` when it holds only what the delegate put there (most tasks: three
    calls, no tree walk); False when it holds more, or the task replaced a file with a
    directory."""
    try:
        for path in (made.script, made.output_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        made.task_dir.rmdir()
    except OSError:
        return False
    return True


def _close(made: TaskDir) -> None:
    for fd in (made.output_fd, made.script_fd):
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    made.output_fd, made.script_fd = -1, None


def _identity(task_dir: Path, script_fd: int, output_fd: int) -> tuple[tuple[int, int, int], ...]:
    """(inode, mode, owner) of the directory and its two files, as made."""
    return tuple(
        (s.st_ino, s.st_mode, s.st_uid)
        for s in (os.lstat(task_dir), os.fstat(script_fd), os.fstat(output_fd))
    )


def _unchanged(made: TaskDir) -> bool:
    """``made`` holds only its two files, the very ones made, each with its one link and
    its mode and owner as made, in the directory as made."""
    try:
        with os.scandir(made.task_dir) as entries:
            if {e.name for e in entries} != _OWN_FILES:
                return False
        now = [os.lstat(made.task_dir), os.lstat(made.script), os.lstat(made.output_file)]
    except OSError:
        return False
    if any(s.st_nlink != 1 for s in now[1:]) or not stat.S_ISDIR(now[0].st_mode):
        return False
    return tuple((s.st_ino, s.st_mode, s.st_uid) for s in now) == made.identity


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_secret_files(task_dir: Path, files: Mapping[str, bytes]) -> dict[str, str]:
    """Each file under ``task_dir/secrets`` (0700), named after its variable; var -> path."""
    if not files:
        return {}
    folder = task_dir / "secrets"
    folder.mkdir(mode=0o700)
    env: dict[str, str] = {}
    for name, content in files.items():
        # A variable name is also the file's name, so it must not be able to leave the folder.
        if not _VARIABLE.fullmatch(name):
            raise ValueError(f"secret file variable {name!r} is not a variable name")
        path = folder / name
        _write_private(path, content)
        env[name] = str(path)
    return env


def _working_dir(task_dir: Path, working_dir: str | None) -> Path | str:
    """The directory to run in, or why there is none."""
    if working_dir is None:
        return task_dir
    path = Path(working_dir)
    if path.is_absolute():
        if not path.is_dir():
            return f"working_dir {working_dir} does not exist or is not a directory"
        return path
    resolved = (task_dir / path).resolve()
    if not resolved.is_relative_to(task_dir.resolve()):
        return f"working_dir {working_dir} leads out of the task's directory"
    resolved.mkdir(mode=0o700, parents=True, exist_ok=True)
    return resolved
