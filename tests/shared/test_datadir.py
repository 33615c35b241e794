"""shared.datadir: what is repaired, what is refused, what is left alone; and the SQLite
store's files are private whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.store.sqlite import SqliteStore
from shared.datadir import DataDirError, is_key_file, secure_tree


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    return data


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_private_tree_needs_nothing(root: Path) -> None:
    (root / "keys").mkdir(mode=0o700)
    (root / "keys" / "k2.key").write_bytes(b"k")
    os.chmod(root / "keys" / "k2.key", 0o600)
    assert secure_tree(root) == []


def test_directories_and_data_files_are_repaired(root: Path) -> None:
    os.chmod(root, 0o755)
    (root / "tls").mkdir()
    os.chmod(root / "tls", 0o750)
    db = root / "tether.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    cert = root / "tls" / "ca.pem"
    cert.write_bytes(b"")
    os.chmod(cert, 0o666)

    repairs = secure_tree(root)

    assert sorted(str(r) for r in repairs) == sorted(
        [
            f"{root} 0755->0700",
            f"{root / 'tls'} 0750->0700",
            f"{db} 0644->0600",
            f"{cert} 0666->0600",
        ]
    )
    assert (mode(root), mode(root / "tls"), mode(db), mode(cert)) == (0o700, 0o700, 0o600, 0o600)
    assert secure_tree(root) == []


@pytest.mark.parametrize(
    "name", ["master.key", "keys/k3.key", "tls/server-key.pem", "admin-api-key", "delegate.key"]
)
def test_a_key_readable_by_others_is_refused_and_left_as_it_is(root: Path, name: str) -> None:
    path = root / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(b"k")
    os.chmod(path, 0o640)
    with pytest.raises(DataDirError) as caught:
        secure_tree(root)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is mode 0640")
    assert mode(path) == 0o640
    assert is_key_file(path)


def test_links_are_not_followed_and_scratch_contents_not_checked(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "public.txt"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    (root / "link").symlink_to(outside)
    work = root / "work"
    work.mkdir()
    (work / "task-1").mkdir()
    # Explicit modes: mkdir's are cut by the process umask, which an earlier in-process
    # command in the same worker may have narrowed.
    os.chmod(work, 0o755)
    os.chmod(work / "task-1", 0o755)
    (work / "task-1" / "artifact").write_text("y")

    repairs = secure_tree(root, scratch=("work",))

    assert [str(r) for r in repairs] == [f"{work} 0755->0700"]
    assert mode(outside) == 0o644
    assert mode(work / "task-1") == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_an_entry_owned_by_another_user_is_refused(root: Path) -> None:
    stray = root / "tether.db"
    stray.write_bytes(b"")
    os.chmod(stray, 0o600)
    os.chown(stray, 12345, 12345)
    with pytest.raises(DataDirError, match="owned by uid 12345"):
        secure_tree(root)


@pytest.mark.usefixtures("open_umask")
async def test_the_sqlite_store_and_its_wal_and_shm_are_0600_under_an_open_umask(
    root: Path,
) -> None:
    store = SqliteStore(root / "tether.db")
    await store.open()
    try:
        await store.put_setting_if_absent("x", "y")
        files = sorted(root.glob("tether.db*"))
        assert [p.name for p in files] == ["tether.db", "tether.db-shm", "tether.db-wal"]
        assert {p.name: mode(p) for p in files} == dict.fromkeys((p.name for p in files), 0o600)
    finally:
        await store.close()
