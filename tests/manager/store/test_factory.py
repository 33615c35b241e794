from __future__ import annotations

import stat
from pathlib import Path

import pytest

from manager.store.factory import open_store_url
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore
from tests.manager.conftest import PG_URL, StoreMaker


def test_no_url_is_sqlite_in_a_private_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert isinstance(open_store_url(None, data_dir), SqliteStore)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("url", ["postgresql://u@db:5432/tether", "postgres://u@db/tether"])
def test_postgres_urls_are_postgres(url: str, tmp_path: Path) -> None:
    assert isinstance(open_store_url(url, tmp_path), PostgresStore)


@pytest.mark.parametrize("url", ["mysql://u:hunter2@db/tether", "hunter2@db/tether", ""])
def test_other_urls_are_refused_without_echoing_them(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported database URL") as info:
        open_store_url(url, tmp_path)
    assert "hunter2" not in str(info.value)


async def test_a_url_may_pick_the_schema(pg: StoreMaker, tmp_path: Path) -> None:
    sep = "&" if "?" in PG_URL else "?"
    store = open_store_url(f"{PG_URL}{sep}search_path={pg.schema}", tmp_path)
    await store.open()
    try:
        await store.put_setting_if_absent("k", "v")
    finally:
        await store.close()
    assert [tuple(r) for r in await pg.fetch("SELECT key, value FROM settings")] == [("k", "v")]
