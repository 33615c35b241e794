"""Pick the store from the ``--database`` option: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from manager.store.base import Store
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore

__all__ = ["SQLITE_FILE", "open_store", "open_store_url"]

SQLITE_FILE = "tether.db"
_POSTGRES_SCHEMES = {"postgresql", "postgres"}


def open_store_url(url: str | None, data_dir: Path) -> Store:
    """The store for ``url`` (not opened yet): SQLite in ``data_dir`` when ``url`` is None,
    PostgreSQL for a ``postgresql://`` or ``postgres://`` URL."""
    if url is None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SqliteStore(data_dir / SQLITE_FILE)
    scheme = urlsplit(url).scheme.lower()
    if scheme in _POSTGRES_SCHEMES:
        return PostgresStore(url)
    # Name only the scheme: the rest of the URL may hold a password.
    raise ValueError(
        f"unsupported database URL scheme {scheme or '(none)'!r}:"
        " use postgresql://user@host:port/dbname, or no --database for SQLite"
    )


def open_store(data_dir: Path, database: str | None = None) -> Store:
    """SQLite in the data dir, or PostgreSQL when a ``postgresql://`` URL is given."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open_store_url(database, data_dir)
