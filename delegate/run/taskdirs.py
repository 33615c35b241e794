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
and the directory is removed as before. The same checks run again when a kept directory is
taken, with both files empty: another task, of the same user, could reach it while it
waited. Directories of tasks run as a task user (a slot) are never kept: the slot's sweep
removes them with the user's own rights.

Kept directories hold two empty files, and nothing of the tasks they served (no byte, no
block, no ``user.`` extended attribute);
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
    # Directories that may be kept: (inode, mode, owner) of the directory and its two
    # files as made, checked whenever the directory is kept or taken (_unchanged).
    identity: tuple[tuple[int, int, int], ...] = ()


class TaskDirs:
    """The task directories of one work root, keeping up to ``keep`` of them between tasks
    run as the delegate's own user (0 keeps none). A kept directory holds no descriptor:
    its files are opened again, without following links, when it is taken."""

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
        """After a task run as the delegate's own user: keep ``made``, emptied, when it holds
        only its own two files, unchanged, and a place is free; else remove its own files.
        False: the task left more behind, for :meth:`remove` (a tree walk, for a worker
        thread)."""
        keep = bool(made.identity) and len(self._kept) < self._keep and _unchanged(made)
        if keep:
            try:
                # Nothing of a task stays at rest after it (tests/e2e/test_sealed_at_rest.py).
                os.ftruncate(made.output_fd, 0)
                os.close(_open_own(made, made.script, os.O_WRONLY | os.O_TRUNC))
            except OSError:
                keep = False
        _close(made)
        if keep:
            made.file_env, made.error, made.cwd = {}, None, made.task_dir
            self._kept.append(made)
            return True
        return _remove_own_files(made)

    def remove(self, made: TaskDir) -> None:
        """Remove ``made`` and everything in it."""
        _close(made)
        shutil.rmtree(made.task_dir, ignore_errors=True)

    def forget(self, made: TaskDir) -> None:
        """Let go of ``made``'s descriptor without touching its files (a slot's sweep
        removes them)."""
        _close(made)

    def close(self) -> None:
        """Remove every kept directory (the delegate is stopping)."""
        kept, self._kept = self._kept, []
        for made in kept:
            self._discard(made)

    def _take(self, script: bytes) -> TaskDir | None:
        while self._kept:
            try:
                made = self._kept.pop()
            except IndexError:  # another thread took the last one meanwhile
                return None
            # Checked again: while it waited, another task (the delegate's own user too)
            # could reach it, and replace or write into its files.
            try:
                taken = _unchanged(made, empty=True)
                if taken:
                    _write_into(made, script)
                    made.output_fd = _open_own(made, made.output_file, os.O_RDWR)
            except OSError:
                taken = False
            if taken:
                return made
            self._discard(made)
        return None

    def _fresh(self, script: bytes, *, reuse: bool) -> TaskDir:
        self.work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdtemp makes the directory 0700: the script and its output file are the task's.
        task_dir = Path(tempfile.mkdtemp(prefix="task-", dir=self.work_root))
        output_fd = None
        try:
            script_path, output_file = task_dir / "script", task_dir / "output"
            script_fd = os.open(
                script_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            try:
                _write_all(script_fd, script)
                script_stat = os.fstat(script_fd)
            finally:
                os.close(script_fd)
            output_fd = os.open(
                output_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
            made = TaskDir(task_dir, script_path, output_file, output_fd, task_dir)
            if reuse:
                made.identity = tuple(
                    _identity(s) for s in (os.lstat(task_dir), script_stat, os.fstat(output_fd))
                )
            return made
        except BaseException:
            if output_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(output_fd)
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
    if made.output_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(made.output_fd)
    made.output_fd = -1


def _open_own(made: TaskDir, path: Path, flags: int) -> int:
    """``path`` opened without following a link, and only if it is still the file made
    there, with its one link: OSError otherwise."""
    # O_NONBLOCK: a FIFO swapped in after the check would block the open (ENXIO instead).
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        s = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    index = 1 if path == made.script else 2
    if _identity(s) == made.identity[index] and s.st_nlink == 1:
        return fd
    os.close(fd)
    raise OSError(f"{path.name} is not the file made there")


def _write_into(made: TaskDir, script: bytes) -> None:
    """``script`` into ``made``'s empty script file. Opened without O_TRUNC: on ext4,
    truncating a file then writing and closing it starts its write-back at the close
    (``auto_da_alloc``), which made a kept directory cost as much as a new one."""
    fd = _open_own(made, made.script, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size:
            raise OSError("the script file is not empty")
        _write_all(fd, script)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data``: a short write (a full disk) raises instead of leaving part of it."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("nothing written")
        view = view[written:]


def _unchanged(made: TaskDir, *, empty: bool = False) -> bool:
    """``made`` holds only its two files, the very ones made, each with its one link and
    its mode and owner as made, in the directory as made, and no extended attribute a task
    could have added; with ``empty``, both files hold no byte and no block."""
    try:
        with os.scandir(made.task_dir) as entries:
            if {e.name for e in entries} != _OWN_FILES:
                return False
        now = [os.lstat(made.task_dir), os.lstat(made.script), os.lstat(made.output_file)]
        if any(_user_attributes(p) for p in (made.script, made.output_file)):
            return False
    except OSError:
        return False
    if any(s.st_nlink != 1 for s in now[1:]) or not stat.S_ISDIR(now[0].st_mode):
        return False
    if empty and any(s.st_size or s.st_blocks for s in now[1:]):
        return False
    return tuple(_identity(s) for s in now) == made.identity


def _identity(s: os.stat_result) -> tuple[int, int, int]:
    """What a file must keep to be the one made: its inode, its mode and its owner."""
    return (s.st_ino, s.st_mode, s.st_uid)


def _user_attributes(path: Path) -> bool:
    """``path`` carries a ``user.`` extended attribute (the only kind the delegate's own
    user can set): data a task would leave at rest, or pass to the next."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a file system without them
        return False
    return any(name.startswith("user.") for name in names)


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
