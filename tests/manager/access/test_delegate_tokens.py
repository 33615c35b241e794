"""What the manager remembers of delegate tokens (manager.access.delegate_tokens) and of
environments (manager.tasks.envs): never trusted before a first read, and kept current."""

from __future__ import annotations

from manager.access.delegate_tokens import DelegateTokens
from manager.access.directory import AppBody, Directory, EnvBody
from manager.access.tokens import create_token, resolve_scope
from manager.core.eligibility import ACCOUNT_WIDE, EnvFacts
from manager.store.base import Store
from manager.tasks.envs import EnvIndex


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
