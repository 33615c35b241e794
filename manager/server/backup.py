"""``tether-manager backup``: a consistent copy of the data dir while the manager runs.

The SQLite store is copied with SQLite's online backup API, which reads a consistent
snapshot even while the manager writes (WAL mode). The keys and TLS files are copied as
they are. Everything goes into one tar.gz, mode 0600: it holds the master keys and the
admin API key, so it is as secret as the data dir itself. Its members are recorded 0600
(files) and 0700 (directories), so a restore is as private as the data dir.

With PostgreSQL, back the database up with its own tools (pg_dump); this command then
saves only the files of the data dir.
"""

from __future__ import annotations

import os
import sqlite3
import tarfile
import tempfile
from pathlib import Path

__all__ = ["BackupError", "backup"]

# What a data dir holds besides the store; all of it is needed to restore. keys/ holds the
# rotated master keys (only once `keys rotate` has run). The files are read after the store
# snapshot, and keys are never deleted, so every key the snapshot's rows name is in the
# archive, even when a rotation runs during the backup.
_FILES = ("master.key", "admin-api-key")
_DIRS = ("tls", "keys")


class BackupError(Exception):
    pass


def backup(data_dir: Path, output: Path, *, include_store: bool = True) -> list[str]:
    """Write the archive to ``output``; returns the names it holds."""
    db = data_dir / "tether.db"
    if include_store and not db.exists():
        raise BackupError(f"no SQLite store in {data_dir}")
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tether-backup-") as tmp:
        staged = Path(tmp)
        names: list[str] = []
        if include_store:
            _copy_store(db, staged / "tether.db")
            names.append("tether.db")
        for name in _FILES:
            if (data_dir / name).exists():
                names.append(name)
        for name in _DIRS:
            if (data_dir / name).is_dir():
                names.append(name)
        partial = output.with_name(output.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover .partial keeps its old mode through O_TRUNC
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name in names:
                source = staged / name if name == "tether.db" else data_dir / name
                tar.add(source, arcname=name, filter=_private)
        os.replace(partial, output)
    return names


def _private(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Modes in the archive as they must be after a restore: what `tar -x` recreates is
    as private as the data dir was, whatever the modes on disk at backup time."""
    member.mode = 0o700 if member.isdir() else 0o600
    return member


def _copy_store(source: Path, target: Path) -> None:
    # 0600 from the start: SQLite would make it with the umask's mode.
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(target)
        try:
            with dst:
                src.backup(dst)
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        raise BackupError(f"could not copy the store: {exc}") from None
