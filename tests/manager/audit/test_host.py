"""Host-side admin commands write their audit events as the system, on the same chain."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

from manager.core.audit_chain import AuditEvent, verify
from manager.keys.audit_key import AuditKeys
from manager.keys.masterkey import MasterKey
from manager.store.sqlite import SqliteStore
from tests.manager.trail import make_trail_unwritable

BIN = Path(sys.executable).parent


async def manager(*argv: str) -> tuple[int, str, str]:
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
    return proc.returncode, out.decode(), err.decode()


async def test_token_and_key_commands_on_the_host_are_audited_as_the_system(
    tmp_path: Path,
) -> None:
    MasterKey.load_or_create(tmp_path / "master.key")
    store = SqliteStore(tmp_path / "tether.db")
    await store.open()
    await store.close()
    d = ("--data-dir", str(tmp_path))
    code, out, err = await manager("token", "create", "build", *d)
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    for argv in (("token", "revoke", "build"), ("keys", "rotate")):
        code, out, err = await manager(*argv, *d)
        assert code == 0, err

    store = SqliteStore(tmp_path / "tether.db")
    await store.open()
    try:
        events: list[AuditEvent] = [e async for e in store.audit_events_all()]
        keys = AuditKeys(MasterKey.load(tmp_path / "master.key"))
        assert verify(events, await store.audit_head(), keys.lookup) is None
        assert {e.key_id for e in events} == {"k1", "k2"}  # keyed, by the key current then
    finally:
        await store.close()
    assert [(e.actor_kind, e.method, e.client_ip) for e in events] == [
        ("system", "CLI", "local")
    ] * 3
    assert [(e.resource_type, e.action, e.resource_name) for e in events] == [
        ("token", "create", "build"),
        ("token", "revoke", "build"),
        ("master_key", "rotate", events[2].resource_id),
    ]
    assert events[0].path == "tether-manager token create build"
    # The token's value is printed once, and is in no event.
    assert token.startswith("tdt_")
    assert all(token not in str(e) for e in events)
    assert "current:" in events[2].diff


async def test_a_scoped_token_made_on_the_host_lists_its_scope(tmp_path: Path) -> None:
    MasterKey.load_or_create(tmp_path / "master.key")
    store = SqliteStore(tmp_path / "tether.db")
    await store.open()
    await store.close()
    d = ("--data-dir", str(tmp_path))
    code, _, err = await manager("token", "create", "x", "--scope", "nowhere/prod", *d)
    assert code == 1
    assert "no environment 'prod' in application 'nowhere'" in err
    code, _, err = await manager(
        "token", "create", "dev", "--scope-env-type", "non_production", "--selector", "dev", *d
    )
    assert code == 0, err
    code, out, err = await manager("token", "list", *d)
    assert code == 0, err
    assert "type non_production; selectors dev" in out
    # The refused one was not stored.
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["dev"]


async def test_allowlist_disable_on_the_host_goes_with_its_event_or_not_at_all(
    tmp_path: Path,
) -> None:
    MasterKey.load_or_create(tmp_path / "master.key")
    store = SqliteStore(tmp_path / "tether.db")
    await store.open()
    try:
        await store.update_access_settings(1.0, allowlist_enabled=True)
    finally:
        await store.close()
    make_trail_unwritable(tmp_path / "tether.db")
    d = ("--data-dir", str(tmp_path))
    code, _, err = await manager("allowlist", "disable", *d)
    # The trail unwritable: the allowlist stays on, and the command says so on one line.
    assert code == 1
    assert "the trail is unwritable" in err
    assert "Traceback" not in err
    db = sqlite3.connect(tmp_path / "tether.db")
    assert db.execute("SELECT allowlist_enabled FROM access_settings").fetchall() == [(1,)]
    db.execute("DROP TRIGGER unwritable")
    db.commit()
    db.close()
    code, _, err = await manager("allowlist", "disable", *d)
    assert code == 0, err
    store = SqliteStore(tmp_path / "tether.db")
    await store.open()
    try:
        assert not (await store.access_settings()).allowlist_enabled
        events = [e async for e in store.audit_events_all()]
    finally:
        await store.close()
    assert [(e.resource_type, e.action, e.actor_kind) for e in events] == [
        ("allowlist", "disable", "system")
    ]
