"""The modes of a data directory (the manager's, or a delegate's), checked at start.

Everything the processes keep there is secret: the store (with its WAL and SHM files),
master keys, TLS and delegate private keys, the admin API key, the spool of task logs. So
every directory in the tree must be 0700 and every file 0600 (or stricter), owned by the
user the process runs as. A data dir made by hand, or restored by a tool that kept other
modes, is not trusted to be right:

- a directory, or a data file (the store, the spool, a certificate), that group or others
  can read is repaired (chmod), and the start-up log says so, naming each one: from now on
  it is private, and nothing about its past exposure is known here;
- a key file that group or others can read is refused: the key must be taken as leaked, so
  the operator decides (rotate it, or chmod it after making sure);
- an entry owned by another user is refused: this process could neither trust nor repair it.

Symbolic links are not followed (what they point at is the operator's choice) and other
kinds of file are left alone. A refusal is a :class:`DataDirError` whose message is one line
naming the file and its mode; the commands exit with status 2 (configuration error).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = ["DataDirError", "Repair", "is_key_file", "secure_data_dir", "secure_tree"]

log = structlog.get_logger("tether.datadir")

_PRIVATE_DIR = 0o700
_OTHERS = 0o077


class DataDirError(Exception):
    """The data dir cannot be used as it is; the message is one line, for the operator."""


@dataclass(frozen=True, slots=True)
class Repair:
    path: Path
    old_mode: int
    new_mode: int

    def __str__(self) -> str:
        return f"{self.path} {self.old_mode:04o}->{self.new_mode:04o}"


def is_key_file(path: Path) -> bool:
    """Private key material: master.key, keys/k2.key, delegate.key, tls/*-key.pem, the
    admin API key."""
    name = path.name
    return name.endswith((".key", "-key.pem")) or name == "admin-api-key"


def secure_data_dir(root: Path, *, scratch: tuple[str, ...] = ()) -> list[Repair]:
    """Make ``root`` (0700) when missing, check its tree, and say in the log which was done:
    modes repaired (each named) or found private. DataDirError on a refusal. ``scratch``
    names subdirectories checked themselves but not their contents (see secure_tree)."""
    try:
        root.mkdir(mode=_PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot make the data dir {root}: {exc.strerror}; check --data-dir"
        ) from None
    repairs = secure_tree(root, scratch=scratch)
    if repairs:
        log.warning(
            "data dir modes repaired: group or others could read these",
            data_dir=str(root),
            repaired=[str(r) for r in repairs],
        )
    else:
        log.info("data dir modes checked: private to this user", data_dir=str(root))
    return repairs


def secure_tree(root: Path, *, scratch: tuple[str, ...] = ()) -> list[Repair]:
    """Check ``root`` and all below it; repair what is safe (see the module's text), return
    what was repaired; DataDirError at the first entry that may not be used as it is.

    The contents of ``root/<name>`` for each name in ``scratch`` are not checked: a task's
    scratch space, which the process empties at start and whose files are the task's own.
    """
    skipped = {root / name for name in scratch}
    uid = os.geteuid()
    repairs: list[Repair] = []
    pending = [root]
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # removed meanwhile (a spool segment shipped): nothing to protect
        except OSError as exc:
            raise DataDirError(f"cannot check {path}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != uid:
            raise DataDirError(
                f"{path} is owned by uid {st.st_uid}, not by this process's uid {uid}"
                f" (mode {mode:04o}); give it to this user (chown) or remove it"
            )
        if stat.S_ISDIR(st.st_mode):
            if mode != _PRIVATE_DIR:
                repairs.append(_chmod(path, mode, _PRIVATE_DIR))
            if path in skipped:
                continue
            try:
                pending.extend(path.iterdir())
            except OSError as exc:
                raise DataDirError(f"cannot list {path}: {exc.strerror}") from None
        elif mode & _OTHERS:
            if is_key_file(path):
                raise DataDirError(
                    f"{path} is mode {mode:04o}: a key readable by group or others may have"
                    f" leaked; rotate it, or run `chmod 600 {path}` once you know it did not"
                )
            repairs.append(_chmod(path, mode, mode & ~_OTHERS & 0o777))
    return repairs


def _chmod(path: Path, old: int, new: int) -> Repair:
    try:
        # Through a descriptor opened without following links: lstat said this is no link,
        # and a link swapped in meanwhile is refused (ELOOP) rather than followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.fchmod(fd, new)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DataDirError(
            f"{path} is mode {old:04o} and cannot be made {new:04o}: {exc.strerror}"
        ) from None
    return Repair(path, old, new)
