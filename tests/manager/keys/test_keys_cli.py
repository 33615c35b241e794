"""``tether-manager keys rotate|rewrap|list`` and the backup of rotated keys, run as real
processes on a data dir made here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from manager.keys.masterkey import MasterKey
from manager.records import BUILTIN_MANAGER_ID, SecretRecord, SecretVersionRecord
from manager.store.sqlite import SqliteStore
from shared.account import DEFAULT_ACCOUNT
from shared.envelope import Envelope, EnvelopeContext, open_with, seal_with

BIN = Path(sys.executable).parent
VALUE = b"correct horse battery staple"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def manager(*argv: str) -> Result:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TETHER_DATA_DIR", "TETHER_DATABASE_URL")
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "tether-manager"),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def ctx(secret_id: str) -> EnvelopeContext:
    return EnvelopeContext(account=DEFAULT_ACCOUNT, secret_id=secret_id, version=1)


async def add_secret(data_dir: Path, secret_id: str, envelope: str | None = None) -> None:
    """A builtin secret of one version, sealed with the data dir's current key."""
    key = MasterKey.load(data_dir / "master.key")
    if envelope is None:
        env = await seal_with(key, "builtin", key.current_id, VALUE, ctx(secret_id))
        envelope = env.to_json()
    now = time.time()
    store = SqliteStore(data_dir / "tether.db")
    await store.open()
    try:
        await store.create_secret(
            SecretRecord(
                id=secret_id,
                name=secret_id,
                manager_id=BUILTIN_MANAGER_ID,
                type="text",
                mode="inline",
                current_version=1,
                created_at=now,
                updated_at=now,
            ),
            SecretVersionRecord(secret_id=secret_id, version=1, created_at=now, envelope=envelope),
        )
    finally:
        await store.close()


async def stored_envelope(data_dir: Path, secret_id: str) -> Envelope:
    store = SqliteStore(data_dir / "tether.db")
    await store.open()
    try:
        version = await store.get_secret_version(secret_id, 1)
    finally:
        await store.close()
    assert version is not None
    assert version.envelope is not None
    return Envelope.from_json(version.envelope)


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    """What a manager's first start leaves: the store and master.key."""
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    store = SqliteStore(path / "tether.db")
    await store.open()
    await store.close()
    MasterKey.load_or_create(path / "master.key")
    return path


async def keys_list(data_dir: Path) -> list[dict[str, object]]:
    res = await manager("keys", "list", "--data-dir", str(data_dir), "--output", "json")
    assert res.code == 0, res.err
    listed: list[dict[str, object]] = json.loads(res.out)
    return listed


async def test_rotate_rewraps_and_list_shows_the_new_current_key(data_dir: Path) -> None:
    await add_secret(data_dir, "sec_db")
    listed = await keys_list(data_dir)
    assert [(k["id"], k["current"]) for k in listed] == [("k1", True)]
    assert isinstance(listed[0]["created_at"], float)

    res = await manager("keys", "rotate", "--data-dir", str(data_dir))

    assert res.code == 0, res.err
    assert "k2 is the current key (was k1)" in res.out
    assert "1 re-wrapped, 0 already current, 0 failed" in res.out
    assert [(k["id"], k["current"]) for k in await keys_list(data_dir)] == [
        ("k1", False),
        ("k2", True),
    ]
    env = await stored_envelope(data_dir, "sec_db")
    assert env.kek_id == "k2"
    assert await open_with(MasterKey.load(data_dir / "master.key"), env, ctx("sec_db")) == VALUE

    text = await manager("keys", "list", "--data-dir", str(data_dir))
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == ["ID", "CURRENT", "CREATED"]
    assert lines[2].split()[:2] == ["k2", "*"]

    again = await manager("keys", "rewrap", "--data-dir", str(data_dir))
    assert again.code == 0, again.err
    assert "0 re-wrapped, 1 already current, 0 failed" in again.out


async def test_rotate_exits_1_and_names_the_secrets_it_could_not_rewrap(data_dir: Path) -> None:
    key = MasterKey.load(data_dir / "master.key")
    # Sealed for another secret id: its wrapping does not open in this secret's context.
    misplaced = await seal_with(key, "builtin", "k1", VALUE, ctx("sec_elsewhere"))
    await add_secret(data_dir, "sec_bad", misplaced.to_json())
    await add_secret(data_dir, "sec_good")

    res = await manager("keys", "rotate", "--data-dir", str(data_dir))

    assert res.code == 1
    assert "k2 is the current key" in res.out
    assert "1 re-wrapped, 0 already current, 1 failed" in res.out
    assert "failed: secret sec_bad version 1: wrapped key does not open" in res.err
    assert "keys rewrap" in res.err
    assert VALUE.decode() not in res.out + res.err
    assert (await stored_envelope(data_dir, "sec_bad")).kek_id == "k1"


async def test_keys_commands_need_a_data_dir(tmp_path: Path) -> None:
    for command in ("rotate", "list"):
        res = await manager("keys", command, "--data-dir", str(tmp_path / "none"))
        assert res.code == 2
        assert "no master key" in res.err
    assert not (tmp_path / "none").exists()


async def test_rotate_without_a_store_changes_nothing(tmp_path: Path) -> None:
    MasterKey.load_or_create(tmp_path / "master.key")
    res = await manager("keys", "rotate", "--data-dir", str(tmp_path))
    assert res.code == 2
    assert "no manager data" in res.err
    assert not (tmp_path / "keys").exists()


async def test_a_key_readable_by_others_fails_the_command(data_dir: Path) -> None:
    (data_dir / "master.key").chmod(0o644)
    res = await manager("keys", "list", "--data-dir", str(data_dir))
    assert res.code == 1
    assert "readable by group or others" in res.err


async def test_backup_holds_the_rotated_keys_and_restores(data_dir: Path, tmp_path: Path) -> None:
    await add_secret(data_dir, "sec_db")
    assert (await manager("keys", "rotate", "--data-dir", str(data_dir))).code == 0
    archive = tmp_path / "backup.tar.gz"

    res = await manager("backup", "--data-dir", str(data_dir), "--output", str(archive))

    assert res.code == 0, res.err
    restored = tmp_path / "restored"
    with tarfile.open(archive) as tar:
        assert {"master.key", "keys", "keys/k2.key", "keys/current"} <= set(tar.getnames())
        tar.extractall(restored, filter="data")
    # (The "data" filter leaves directory modes to the umask; `tar -x` keeps keys/ 0700.
    # The key files are what must stay private, and they do.)
    assert (restored / "keys" / "k2.key").stat().st_mode & 0o777 == 0o600
    key = MasterKey.load(restored / "master.key")
    assert key.current_id == "k2"
    env = await stored_envelope(restored, "sec_db")
    assert await open_with(key, env, ctx("sec_db")) == VALUE
