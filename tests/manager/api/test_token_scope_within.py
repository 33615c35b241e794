"""A delegate token hands its delegates the tasks and secrets of its scope, so making or
revoking one is running tasks there: manage_delegates with rights on staging alone makes
staging tokens, never an account-wide or a production one (a red-team finding: such a user
made an account-wide token, ran a delegate with it and read a production secret)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.core.rbac import Grants, uncovered_delegate_scope
from manager.schemas.grants import AppGrant, Target
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import member, place

STAGING = Target("app_c", "env_stg", "non_production")
PROD = Target("app_c", "env_prod", "production")


def grants(*apps: AppGrant) -> Grants:
    return Grants.union([(["manage_delegates"], apps)])


@pytest.mark.parametrize(
    ("held", "scope", "missing"),
    [
        # Staging alone: staging, nothing wider.
        (
            grants(AppGrant(apps=("app_c",), envs=("env_stg",), actions=("execute",))),
            {"envs": [STAGING]},
            [],
        ),
        (
            grants(AppGrant(apps=("app_c",), envs=("env_stg",), actions=("execute",))),
            {"envs": [PROD]},
            ["environment env_prod"],
        ),
        (
            grants(AppGrant(apps=("app_c",), envs=("env_stg",), actions=("execute",))),
            {"account_wide": True},
            ["the whole account"],
        ),
        (
            grants(AppGrant(apps=("app_c",), envs=("env_stg",), actions=("execute",))),
            {"apps": ["app_c"]},
            ["application app_c"],
        ),
        (
            grants(AppGrant(apps=("app_c",), envs="non_production", actions=("execute",))),
            {"env_types": ["non_production"]},
            ["environment type non_production"],
        ),
        # Read is not run.
        (grants(AppGrant(actions=("read",))), {"envs": [STAGING]}, ["environment env_stg"]),
        # Whole grants cover whole scopes.
        (grants(AppGrant(apps=("app_c",), actions=("execute",))), {"apps": ["app_c"]}, []),
        (
            grants(AppGrant(envs="production", actions=("execute",))),
            {"env_types": ["production"], "envs": [PROD]},
            [],
        ),
        (grants(AppGrant(actions=("execute",))), {"account_wide": True}, []),
    ],
)
def test_a_scope_is_covered_only_by_execute_on_all_of_it(
    held: Grants, scope: dict[str, Any], missing: list[str]
) -> None:
    got = uncovered_delegate_scope(
        held,
        account_wide=scope.get("account_wide", False),
        apps=scope.get("apps", []),
        envs=scope.get("envs", []),
        env_types=scope.get("env_types", []),
    )
    assert got == missing


async def test_a_staging_delegate_manager_makes_and_revokes_staging_tokens_only(
    m: Manager, store: Store
) -> None:
    app, staging = await place(store, "checkout", "staging", "non_production")
    await place(store, "checkout", "prod", "production")
    ops = await member(
        store,
        "ops@example.com",
        account=["manage_delegates"],
        apps=[AppGrant(apps=(app,), envs=(staging,), actions=("read", "execute"))],
    )
    for body in ({"name": "wide"}, {"name": "p", "scope": ["checkout/prod"]}):
        status, answer = await m.call("POST", "/api/v1/tokens", body, key=ops)
        assert status == 403, answer
        assert "within your own rights" in answer["error"]["message"]
    status, made = await m.call(
        "POST", "/api/v1/tokens", {"name": "stg", "scope": ["checkout/staging"]}, key=ops
    )
    assert status == 201, made
    # The admin's production token is out of this user's reach, to revoke as to make.
    status, prod = await m.call(
        "POST", "/api/v1/tokens", {"name": "prod", "scope": ["checkout/prod"]}
    )
    assert status == 201, prod
    status, answer = await m.call("DELETE", "/api/v1/tokens/prod", key=ops)
    assert status == 403, answer
    listed = {
        t["name"]: t["revoked_at"] for t in (await m.call("GET", "/api/v1/tokens"))[1]["tokens"]
    }
    assert listed["prod"] is None
    assert sorted(listed) == ["prod", "stg"]
    status, _ = await m.call("DELETE", "/api/v1/tokens/stg", key=ops)
    assert status == 200
