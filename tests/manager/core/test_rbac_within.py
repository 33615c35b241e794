"""``within(a, b)``: a allows nothing b does not, now or as applications and environments are
added. Table cases, and a property against ``Grants.allows`` over random places."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from manager.core.rbac import FULL, Grants, within
from manager.schemas.grants import ACCOUNT_PERMISSIONS, ACTIONS, AppGrant, EnvType, Target

# Two applications with a production and a staging environment each.
ENVS: dict[str, tuple[str, EnvType]] = {
    "e_a_prod": ("a", "production"),
    "e_a_stg": ("a", "non_production"),
    "e_b_prod": ("b", "production"),
    "e_b_stg": ("b", "non_production"),
}


def g(*grants: AppGrant, account: tuple[str, ...] = ()) -> Grants:
    return Grants(frozenset(account), grants)  # type: ignore[arg-type]


def grant(
    apps: object = "all", envs: object = "all", actions: tuple[str, ...] = ("read",)
) -> AppGrant:
    return AppGrant.model_validate({"apps": apps, "envs": envs, "actions": actions})


CASES = [
    # (a, b, within?) — account permissions
    (g(account=("manage_users",)), g(account=("manage_users", "view_audit")), True),
    (g(account=("manage_users", "view_audit")), g(account=("manage_users",)), False),
    (g(), g(), True),
    # actions
    (g(grant(actions=("read",))), g(grant(actions=("read", "execute"))), True),
    (g(grant(actions=("read", "execute"))), g(grant(actions=("read",))), False),
    # applications: "all" covers named ones, never the other way (future applications)
    (g(grant(apps=("a",))), g(grant()), True),
    (g(grant()), g(grant(apps=("a", "b"))), False),
    (g(grant(apps=("a", "b"))), g(grant(apps=("a",)), grant(apps=("b",))), True),
    (g(grant(apps=("a", "b"))), g(grant(apps=("a",))), False),
    # environment types: "all" is both types, in separate grants or one
    (
        g(grant(apps=("a",), envs="all")),
        g(grant(apps=("a",), envs="production"), grant(apps=("a",), envs="non_production")),
        True,
    ),
    # ... but everywhere also means outside any application: one universal grant only
    (g(grant(envs="all")), g(grant(envs="production"), grant(envs="non_production")), False),
    (g(grant(envs="all")), g(grant(envs="all", actions=("read", "update"))), True),
    (g(grant(envs="all")), g(grant(envs="production")), False),
    (g(grant(envs="non_production")), g(grant(envs="production")), False),
    # environment ids: matched by id, by "all", or by their type when it is known
    (g(grant(apps=("a",), envs=("e_a_stg",))), g(grant(apps=("a",), envs="non_production")), True),
    (
        g(grant(apps=("a",), envs=("e_a_prod",))),
        g(grant(apps=("a",), envs="non_production")),
        False,
    ),
    (g(grant(apps=("a",), envs=("e_a_stg",))), g(grant(apps=("a",), envs=("e_a_stg",))), True),
    (g(grant(apps=("a",), envs="non_production")), g(grant(apps=("a",), envs=("e_a_stg",))), False),
    (g(grant(envs=("e_b_stg",))), g(grant(apps=("b",), envs="non_production")), True),
    (g(grant(envs=("e_b_stg",))), g(grant(apps=("a",))), False),
    # the administrators hold everything; nothing holds more
    (FULL, g(grant(actions=ACTIONS), account=ACCOUNT_PERMISSIONS), True),
    (FULL, g(grant(actions=ACTIONS), account=ACCOUNT_PERMISSIONS[:-1]), False),
    (g(grant(apps=("a",), actions=ACTIONS), account=("view_audit",)), FULL, True),
]


@pytest.mark.parametrize(("a", "b", "expected"), CASES)
def test_within(a: Grants, b: Grants, expected: bool) -> None:
    assert within(a, b, envs=ENVS) is expected


def test_an_env_id_of_unknown_type_is_matched_only_by_id_or_all() -> None:
    a = g(grant(apps=("a",), envs=("e_a_stg",)))
    assert not within(a, g(grant(apps=("a",), envs="non_production")))
    assert within(a, g(grant(apps=("a",))))


# -- the property: within(a, b) means every (target, action) a allows, b allows -------------

APPS = ("a", "b", "c")  # "c" has no environment yet: it stands for one added later
_apps = st.one_of(
    st.just("all"), st.lists(st.sampled_from(APPS), min_size=1, unique=True).map(tuple)
)
_envs = st.one_of(
    st.sampled_from(["all", "production", "non_production"]),
    st.lists(st.sampled_from(sorted(ENVS)), min_size=1, unique=True).map(tuple),
)
_grant = st.builds(
    lambda apps, envs, actions: AppGrant.model_validate(
        {"apps": apps, "envs": envs, "actions": actions}
    ),
    _apps,
    _envs,
    st.lists(st.sampled_from(ACTIONS), min_size=1, unique=True).map(tuple),
)
grants_st = st.builds(
    lambda account, apps: Grants(frozenset(account), tuple(apps)),
    st.lists(st.sampled_from(ACCOUNT_PERMISSIONS), unique=True),
    st.lists(_grant, max_size=3),
)
# Every place a grant can reach: the known environments, and new ones of either type in a
# known or a new application.
TARGETS = [Target(app, env, kind) for env, (app, kind) in ENVS.items()] + [
    Target(app, f"new_{app}_{kind}", kind)
    for app in APPS
    for kind in ("production", "non_production")
]


@settings(max_examples=300, deadline=None)
@given(grants_st, grants_st)
# Found by the property beside the permission matrix: both types are not "everywhere".
@example(g(grant()), g(grant(envs="production"), grant(envs="non_production")))
def test_within_never_says_yes_to_more(a: Grants, b: Grants) -> None:
    if not within(a, b, envs=ENVS):
        return
    assert a.account <= b.account
    for t in TARGETS:
        for action in ACTIONS:
            if a.allows(t, action):
                assert b.allows(t, action), (t, action)
        # and outside any application
    for action in ACTIONS:
        assert not a.allows(None, action) or b.allows(None, action)


@settings(max_examples=100, deadline=None)
@given(grants_st)
def test_grants_are_within_themselves_and_the_administrators(a: Grants) -> None:
    assert within(a, a, envs=ENVS)
    assert within(a, FULL, envs=ENVS)
