"""The migration runner on both stores: one transaction per migration, a failed one leaves
the database as it was, and a database newer than this release is refused before any
write. Then the same through the real ``tether-manager`` command: ``migrate --dry-run``,
``migrate``, and ``serve`` refusing a newer schema with exit status 2.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.store import postgres, sqlite
from manager.store.migrations import MigrationFailed, SchemaTooNew, pending
from manager.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests.manager.conftest import StoreMaker, postgres_schema_maker

BIN = Path(sys.executable).parent
OLD_SQLITE = Path(__file__).resolve().parent / "data" / "v0.1.0" / "sqlite" / "manager"
OLD_VERSION = 10  # release 0.1.0's last migration


@pytest.fixture(params=["sqlite", "postgres"])
async def maker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreMaker]:
    if request.param == "sqlite":
        yield StoreMaker("sqlite", tmp_path / "tether.db")
        return
    async with postgres_schema_maker(tmp_path) as m:
        yield m


def module_of(maker: StoreMaker) -> Any:
    return sqlite if maker.kind == "sqlite" else postgres


async def table_exists(maker: StoreMaker, name: str) -> bool:
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        finally:
            conn.close()
        return row is not None
    rows = await maker.fetch("SELECT to_regclass($1) IS NOT NULL AS present", name)
    return bool(rows[0]["present"])


async def migrated(maker: StoreMaker) -> None:
    store = maker()
    await store.open()
    await store.close()


def test_pending_lists_what_is_above_the_current_version_in_order() -> None:
    migrations = [(1, "a"), (2, "b"), (3, "c")]
    assert pending(0, migrations) == migrations
    assert pending(2, migrations) == [(3, "c")]
    assert pending(3, migrations) == []


def test_pending_refuses_a_version_above_every_known_migration() -> None:
    with pytest.raises(SchemaTooNew, match=r"schema version 4, newer .* \(up to 3\)"):
        pending(4, [(1, "a"), (2, "b"), (3, "c")])


async def test_a_failed_migration_is_rolled_back_whole_and_earlier_ones_stay(
    maker: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = maker.migrations
    top = every[-1][0]
    # The first statement of the bad migration succeeds, the second fails: the first must
    # be undone with it, and the good migration before it must stay.
    good = (top + 1, "CREATE TABLE upgrade_good (x INTEGER)")
    bad = (top + 2, "CREATE TABLE upgrade_half (x INTEGER); INSERT INTO nowhere VALUES (1)")
    monkeypatch.setattr(module_of(maker), "MIGRATIONS", [*every, good, bad])
    with pytest.raises(MigrationFailed) as caught:
        await migrated(maker)
    message = str(caught.value)
    assert f"migration {top + 2} failed and was rolled back" in message
    assert f"stays at schema version {top + 1}" in message
    assert "\n" not in message
    assert await maker.schema_versions() == [v for v, _ in every] + [top + 1]
    assert await table_exists(maker, "upgrade_good")
    assert not await table_exists(maker, "upgrade_half")

    # Fixed, the next start applies it.
    monkeypatch.setattr(
        module_of(maker),
        "MIGRATIONS",
        [*every, good, (top + 2, "CREATE TABLE upgrade_half (x INT)")],
    )
    await migrated(maker)
    assert await table_exists(maker, "upgrade_half")


async def test_an_older_release_refuses_a_newer_database_and_writes_nothing(
    maker: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = maker.migrations
    await migrated(maker)
    before = await maker.schema_versions()
    # This release, as the one before it, that knew one migration less.
    monkeypatch.setattr(module_of(maker), "MIGRATIONS", every[:-1])
    with pytest.raises(SchemaTooNew, match=f"schema version {every[-1][0]}, newer"):
        await migrated(maker)
    assert await maker.schema_versions() == before


# -- the real command ----------------------------------------------------------------------


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
    return Path(shutil.copytree(OLD_SQLITE, tmp_path / "data"))


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
