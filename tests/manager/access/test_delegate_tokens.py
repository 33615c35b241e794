"""What the manager remembers of delegate tokens (manager.access.delegate_tokens) and of
environments (manager.tasks.envs): never trusted before a first read, and kept current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from manager.access.delegate_tokens import REVOCATION_STAMP, DelegateTokens, stamp_revocation
from manager.access.directory import AppBody, Directory, EnvBody
from manager.access.tokens import create_token, resolve_scope
from manager.core.eligibility import ACCOUNT_WIDE, EnvFacts
from manager.keys.masterkey import MasterKey
from manager.records import TokenRecord
from manager.server.app import open_store
from manager.store.base import Store
from manager.store.sqlite import SqliteStore
from manager.tasks.envs import EnvIndex

BIN = Path(sys.executable).parent


async def test_a_new_process_reads_a_revocation_made_before_it_started(store: Store) -> None:
    record, _ = await create_token(store, "ci")
    await store.revoke_token("ci", 10.0)
    tokens = DelegateTokens(store, set())  # a process started after the revocation
    state = await tokens.get(record.id)
    assert state is not None
    assert state.revoked


async def test_a_forgotten_token_is_read_again(store: Store) -> None:
    record, _ = await create_token(store, "ci")
    revoked: set[str] = set()
    tokens = DelegateTokens(store, revoked)
    first = await tokens.get(record.id)
    assert first is not None
    assert not first.revoked
    assert first.scope == ACCOUNT_WIDE
    await store.revoke_token("ci", 10.0)
    tokens.forget(record.id)  # the replica event, or the periodic check
    again = await tokens.get(record.id)
    assert again is not None
    assert again.revoked
    assert record.id in revoked
    assert await tokens.get("tok_unknown") is None


async def test_a_scope_is_stored_by_id_and_read_back(store: Store) -> None:
    d = Directory(store)
    app = await d.apps.insert(AppBody(name="checkout"))
    env = await d.envs.insert(EnvBody(app_id=app.id, name="prod", type="production"))
    scope = await resolve_scope(store, ["checkout/prod"], ["non_production"], ["prod-pool"])
    record, _ = await create_token(store, "prod-hosts", scope)
    state = await DelegateTokens(store, set()).get(record.id)
    assert state is not None
    assert state.scope.envs == frozenset({env.id})
    assert state.scope.env_types == frozenset({"non_production"})
    assert state.scope.selectors == frozenset({"prod-pool"})


async def test_the_environment_index_follows_changes_here_and_elsewhere(store: Store) -> None:
    d = Directory(store)
    app = await d.apps.insert(AppBody(name="checkout"))
    env = await d.envs.insert(EnvBody(app_id=app.id, name="prod", type="production"))
    here, there = EnvIndex(store), EnvIndex(store)
    await here.load()
    await there.load()
    _, changed = await d.envs.update(
        env.id, lambda b: b.model_copy(update={"dedicated_delegates": True})
    )
    here.changed(env.id, changed.body)
    assert here.facts[env.id] == EnvFacts(app.id, "production", dedicated=True)
    assert there.facts[env.id].dedicated is False  # until it hears the event
    await there.reread(env.id)
    assert there.facts == here.facts
    await d.envs.delete(env.id)
    await there.reread(env.id)
    assert env.id not in there.facts


async def test_a_revocation_made_on_the_host_holds_from_the_next_check(tmp_path: Path) -> None:
    # The running manager's view of the token, cached; then `tether-manager token revoke`
    # on the host, through its own connection to the same SQLite file. No replica event and
    # no periodic check reach the manager: the stamp the command touches does.
    MasterKey.load_or_create(tmp_path / "master.key")
    store = open_store(tmp_path)
    await store.open()
    try:
        record, _ = await create_token(store, "ci")
        tokens = DelegateTokens(store, set(), stamp=tmp_path / REVOCATION_STAMP)
        first = await tokens.get(record.id)
        assert first is not None
        assert not first.revoked
        done = subprocess.run(
            [str(BIN / "tether-manager"), "token", "revoke", "ci", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / REVOCATION_STAMP).stat().st_mode & 0o777 == 0o600
        after = await tokens.get(record.id)
        assert after is not None
        assert after.revoked
    finally:
        await store.close()


async def test_without_a_new_stamp_a_check_reads_nothing(tmp_path: Path) -> None:
    class Counting(SqliteStore):
        reads = 0

        async def token_by_id(self, token_id: str) -> TokenRecord | None:
            Counting.reads += 1
            return await super().token_by_id(token_id)

    store = Counting(tmp_path / "tether.db")
    await store.open()
    try:
        record, _ = await create_token(store, "ci")
        stamp = tmp_path / REVOCATION_STAMP
        tokens = DelegateTokens(store, set(), stamp=stamp)
        for _ in range(5):
            await tokens.get(record.id)
        assert Counting.reads == 1
        stamp_revocation(tmp_path)
        os.utime(stamp, ns=(1, 1))  # a different mtime, whatever the clock's resolution
        await tokens.get(record.id)
        assert Counting.reads == 2
    finally:
        await store.close()
