"""Migrations through the real ``tether-manager`` command, on release 0.1.0's data:
``migrate --dry-run`` lists and writes nothing, ``migrate`` applies, and ``serve`` or
``migrate`` on a database newer than this release refuse with one line and exit status 2.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from manager.store.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from tests.upgrade.test_upgrade import copy_data

BIN = Path(sys.executable).parent
OLD_SQLITE = Path(__file__).resolve().parent / "data" / "v0.1.0" / "sqlite" / "manager"
OLD_VERSION = 10  # release 0.1.0's last migration


def manager(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tether-manager"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_data_dir(tmp_path: Path) -> Path:
    return copy_data(OLD_SQLITE, tmp_path / "data")


def test_migrate_dry_run_lists_what_would_run_and_changes_nothing(old_data_dir: Path) -> None:
    db = old_data_dir / "tether.db"
    before = digest(db)
    todo = [v for v, _ in SQLITE_MIGRATIONS if v > OLD_VERSION]
    res = manager("migrate", "--dry-run", "--data-dir", str(old_data_dir))
    assert res.returncode == 0, res.stderr
    expected = f"would apply: {', '.join(map(str, todo))}" if todo else "up to date"
    assert f"schema version {OLD_VERSION}" in res.stdout
    assert expected in res.stdout
    assert digest(db) == before

    res = manager("migrate", "--data-dir", str(old_data_dir))
    assert res.returncode == 0, res.stderr
    conn = sqlite3.connect(db)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    finally:
        conn.close()
    assert versions == [v for v, _ in SQLITE_MIGRATIONS]


def test_migrate_dry_run_on_a_missing_store_is_a_usage_error(tmp_path: Path) -> None:
    res = manager("migrate", "--dry-run", "--data-dir", str(tmp_path / "none"))
    assert res.returncode == 2
    assert not (tmp_path / "none" / "tether.db").exists()


@pytest.mark.parametrize("command", [["serve", "--listen", "127.0.0.1:0"], ["migrate"]])
def test_a_newer_database_is_refused_with_one_line_and_exit_2(
    old_data_dir: Path, command: list[str]
) -> None:
    db = old_data_dir / "tether.db"
    newer = SQLITE_MIGRATIONS[-1][0] + 1
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_version(version) VALUES (?)", (newer,))
    conn.close()
    before = digest(db)
    res = manager(*command, "--data-dir", str(old_data_dir), "--log-format", "json")
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the database is at schema version {newer}, newer than this tether-manager"
        f" knows (up to {SQLITE_MIGRATIONS[-1][0]}): run the release that migrated it, or a"
        " later one; nothing was written"
    ]
    assert "Traceback" not in res.stderr
    assert digest(db) == before
