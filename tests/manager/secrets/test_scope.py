"""Secret usage scopes: a secret's scope lies within its manager's; a task uses a secret only
where its scope covers the task's app and env and the submitter holds create, read and
update there; profiles use only account-scoped secrets; app-scoped secrets show only to
those who may read there; and delivery judges the scope again."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.api.context import Context
from manager.client import TetherClient
from manager.client.cli.context import UsageError
from manager.client.cli.main import run_cli
from manager.client.cli.secrets import parse_scope
from manager.records import TaskRecord
from manager.schemas.grants import AppGrant
from manager.schemas.secrets import ScopeSpec, ScopeTarget, SecretCreate, SecretView
from manager.secrets.scope import UsageScope
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.base import Store
from shared.protocol import TaskState
from shared.sealing import generate_keypair, public_key_b64
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.rbac_support import member, place

VALUE = "pa55-w0rd-of-checkout"
STAGING_ONLY = {"targets": [{"apps": ["checkout"], "envs": ["staging"]}]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(tmp_path / "db", None)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def m(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    await place(store, "checkout", "staging", "non_production")
    await place(store, "checkout", "prod", "production")
    await place(store, "billing", "staging", "non_production")
    async with manager(tmp_path, store, Clock()) as replica:
        yield replica


async def secret(m: Manager, name: str, scope: Any = None, **more: Any) -> dict[str, Any]:
    body = {"name": name, "value": VALUE, **more}
    if scope is not None:
        body["scope"] = scope
    status, view = await m.call("POST", "/api/v1/secrets", body)
    assert status == 201, view
    return view  # type: ignore[no-any-return]


def uses(name: str, **where: str) -> dict[str, Any]:
    script = f'echo ${{secrets.getValue("{name}")}}'
    return {"payload": {"type": "shell", "script": script}, **where}


async def test_a_task_uses_a_secret_only_where_its_scope_reaches(m: Manager) -> None:
    view = await secret(m, "db", STAGING_ONLY)
    assert view["scope"] == {
        "account": False,
        "targets": [{"apps": ["checkout"], "envs": ["staging"]}],
    }
    status, _ = await m.call("POST", "/api/v1/tasks", uses("db", app="checkout", env="staging"))
    assert status == 201
    for app, env in (("checkout", "prod"), ("billing", "staging")):
        status, body = await m.call("POST", "/api/v1/tasks", uses("db", app=app, env=env))
        assert status == 403
        assert body["error"]["message"] == f"secret 'db' is not scoped for use in {app}/{env}"
    status, body = await m.call("POST", "/api/v1/tasks", uses("db"))
    assert status == 403
    assert body["error"]["message"] == (
        "secret 'db' is not scoped for use in tasks outside an application"
    )
    # Without a scope of its own, a secret has its manager's: the builtin is unrestricted.
    await secret(m, "plain")
    assert (await m.call("POST", "/api/v1/tasks", uses("plain")))[0] == 201


async def test_using_secrets_needs_create_read_and_update_where_the_task_runs(
    m: Manager, store: Store
) -> None:
    await secret(m, "db", STAGING_ONLY)
    runner = await member(store, "runner@example.com", apps=[AppGrant(actions=("read", "execute"))])
    status, body = await m.call(
        "POST", "/api/v1/tasks", uses("db", app="checkout", env="staging"), key=runner
    )
    assert status == 403
    assert body["error"]["message"] == (
        "using secrets in checkout/staging needs create, read and update there"
    )
    # The same task without a secret is theirs to run.
    plain = {"payload": {"type": "shell", "script": "true"}, "app": "checkout", "env": "staging"}
    assert (await m.call("POST", "/api/v1/tasks", plain, key=runner))[0] == 201
    deployer = await member(
        store,
        "deployer@example.com",
        apps=[AppGrant(envs="non_production", actions=("create", "read", "update", "execute"))],
    )
    status, _ = await m.call(
        "POST", "/api/v1/tasks", uses("db", app="checkout", env="staging"), key=deployer
    )
    assert status == 201


async def test_a_secrets_scope_lies_within_its_managers(m: Manager) -> None:
    status, view = await m.call(
        "PUT",
        "/api/v1/secret-managers/builtin/scope",
        {"scope": {"targets": [{"apps": "all", "envs": "non_production"}]}},
    )
    assert status == 200, view
    assert view["scope"]["targets"] == [{"apps": "all", "envs": "non_production"}]
    status, body = await m.call(
        "POST",
        "/api/v1/secrets",
        {"name": "prod-db", "value": VALUE, "scope": {"targets": [{"envs": ["prod"]}]}},
    )
    assert status == 400
    assert body["error"]["message"] == (
        "a secret's scope must lie within its secret manager's scope"
    )
    assert (await m.call("GET", "/api/v1/secrets/prod-db"))[0] == 404  # nothing was made
    await secret(m, "stage-db", STAGING_ONLY)
    # Narrowing the manager below a secret's own scope is refused, naming the secret.
    status, body = await m.call(
        "PUT",
        "/api/v1/secret-managers/builtin/scope",
        {"scope": {"targets": [{"apps": ["billing"]}]}},
    )
    assert status == 409
    assert "secret 'stage-db' is scoped beyond that" in body["error"]["message"]
    status, body = await m.call(
        "POST",
        "/api/v1/secrets",
        {"name": "x", "value": VALUE, "scope": {"targets": [{"apps": ["nope"]}]}},
    )
    assert (status, body["error"]["message"]) == (400, "no application 'nope'")


async def test_app_scoped_secrets_show_only_to_readers_there(m: Manager, store: Store) -> None:
    await secret(m, "checkout-db", STAGING_ONLY)
    await secret(m, "profile-token", {"account": True})
    billing = await member(
        store, "billing@example.com", apps=[AppGrant(apps=("billing",), actions=("read",))]
    )
    # (App grants hold ids; "billing" is no id, so this user reads nothing at all.)
    status, listed = await m.call("GET", "/api/v1/secrets", key=billing)
    assert status == 200
    assert [s["name"] for s in listed["secrets"]] == ["profile-token"]
    status, body = await m.call("GET", "/api/v1/secrets/checkout-db", key=billing)
    assert (status, body["error"]["message"]) == (404, "no secret 'checkout-db'")
    reader = await member(store, "reader@example.com", apps=[AppGrant(actions=("read",))])
    status, listed = await m.call("GET", "/api/v1/secrets", key=reader)
    assert {s["name"] for s in listed["secrets"]} == {"checkout-db", "profile-token"}


async def test_profiles_take_only_secrets_scoped_to_the_account(m: Manager) -> None:
    await secret(m, "app-db", STAGING_ONLY)
    await secret(m, "install-token", {"account": True})

    async def put(script: str) -> tuple[int, Any]:
        return await m.call("PUT", "/api/v1/profiles/setup", {"script": script})

    status, body = await put('install --token ${secrets.getValue("app-db")}')
    assert status == 400
    assert body["error"]["message"].startswith("secret 'app-db' is scoped to applications")
    status, body = await put('install --token ${secrets.getValue("missing")}')
    assert (status, body["error"]["message"]) == (400, "no secret 'missing'")
    assert (await put('install --token ${secrets.getValue("install-token")}'))[0] == 200


async def test_delivery_judges_the_scope_again(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db2", None)
    await store.open()
    try:
        app_id, env_id = await place(store, "checkout", "staging", "non_production")
        _, prod_id = await place(store, "checkout", "prod", "production")
        _app, c = await build_app(ManagerConfig(data_dir=tmp_path, clock=Clock()), store)
        await deliver_cases(c, app_id, env_id, prod_id)
    finally:
        await store.close()


async def deliver_cases(c: Context, app_id: str, env_id: str, prod_id: str) -> None:
    assert c.secrets is not None
    made = await c.secrets.create_secret(SecretCreate(name="db", value=VALUE))
    scopes = c.secrets.scopes
    await scopes.set_secret(
        made.id, UsageScope(targets=[ScopeTarget(apps=[app_id], envs=[env_id])])
    )
    _, public = generate_keypair()

    def task(env: str | None, submitted_by: str | None = None) -> TaskRecord:
        return TaskRecord(
            id="task_x",
            type="shell",
            state=TaskState.RUNNING,
            payload={"type": "shell", "script": 'echo ${secrets.getValue("db")}'},
            selectors=(),
            timeout_s=10,
            queue_timeout_s=10,
            max_attempts=1,
            created_at=0,
            attempt=1,
            app_id=None if env is None else app_id,
            env_id=env,
            submitted_by=submitted_by,
        )

    ok, _, unavailable = await c.secrets.deliver(task(env_id), 1, public_key_b64(public))
    assert ([d.name for d in ok], unavailable) == (["db"], {})
    # Scope narrowed after the submit: the prod task no longer gets it.
    _, _, unavailable = await c.secrets.deliver(task(prod_id), 1, public_key_b64(public))
    assert unavailable == {"db": "its usage scope does not cover this task"}
    _, _, unavailable = await c.secrets.deliver(
        task(None, submitted_by="profile:setup"), 1, public_key_b64(public)
    )
    assert unavailable == {"db": "it is not scoped to delegate profiles"}


# -- the CLI ---------------------------------------------------------------------------------


def test_scope_options_read_as_targets() -> None:
    spec = parse_scope(["checkout/staging", "billing", "*/production", "web/*"], True)
    assert spec is not None
    assert spec.model_dump() == {
        "account": True,
        "targets": [
            {"apps": ["checkout"], "envs": ["staging"]},
            {"apps": ["billing"], "envs": "all"},
            {"apps": "all", "envs": "production"},
            {"apps": ["web"], "envs": "all"},
        ],
    }
    assert parse_scope([], False) is None
    with pytest.raises(UsageError, match="give APP or APP/ENV"):
        parse_scope(["/prod"], False)


class ScopeClient(TetherClient):
    def __init__(self) -> None:
        super().__init__("https://manager.invalid", api_key="k")
        self.sent: list[tuple[str, ScopeSpec | None]] = []

    async def set_secret_scope(self, name: str, scope: ScopeSpec | None) -> SecretView:
        self.sent.append((name, scope))
        return SecretView(
            id="sec_1",
            name=name,
            manager="builtin",
            manager_kind="builtin",
            type="text",
            mode="inline",
            current_version=1,
            description="",
            created_at=0,
            updated_at=0,
            scope=scope,
        )


def cli(client: TetherClient, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(
        argv, env={"TETHER_API_KEY": "k"}, out=out, err=err, client_factory=lambda _c: client
    )
    return code, out.getvalue(), err.getvalue()


def test_secret_scope_command_sets_shows_and_clears() -> None:
    client = ScopeClient()
    code, out, err = cli(client, "secret", "scope", "db", "--scope", "checkout/staging")
    assert (code, err) == (0, "")
    assert out.strip() == "secret db: scope checkout/staging"
    code, out, _ = cli(client, "secret", "scope", "db", "--clear")
    assert (code, out.strip()) == (0, "secret db: scope (inherited)")
    assert client.sent[1] == ("db", None)
    code, _, err = cli(client, "secret", "scope", "db")
    assert code == 2
    assert "give --scope APP[/ENV], --scope-account, or --clear" in err
