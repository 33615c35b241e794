"""The hand-out decision (manager.core.eligibility): one table, every rule."""

from __future__ import annotations

import pytest

from manager.core.eligibility import (
    ACCOUNT_WIDE,
    NOTHING,
    DelegateFacts,
    DelegateScope,
    EnvFacts,
    Place,
    TaskFacts,
    disallowed_selectors,
    place_of,
    refusal,
)

PROD = Place("app_checkout", "env_prod", "production", dedicated=False)
STAGING = Place("app_checkout", "env_staging", "non_production", dedicated=False)
OTHER_PROD = Place("app_billing", "env_bprod", "production", dedicated=False)
VAULT = Place("app_checkout", "env_vault", "production", dedicated=True)

PROD_ENV = DelegateScope(envs=frozenset({"env_prod"}))
CHECKOUT = DelegateScope(apps=frozenset({"app_checkout"}))
NON_PROD = DelegateScope(env_types=frozenset({"non_production"}))
PROD_TYPE = DelegateScope(env_types=frozenset({"production"}))


def delegate(
    scope: DelegateScope = ACCOUNT_WIDE,
    *,
    selectors: tuple[str, ...] = ("pool",),
    types: tuple[str, ...] = ("shell",),
    draining: bool = False,
) -> DelegateFacts:
    return DelegateFacts(
        id="dlg_1",
        name="host-1",
        selectors=frozenset(selectors),
        task_types=frozenset(types),
        scope=scope,
        draining=draining,
    )


def task(place: Place | None, selectors: tuple[str, ...] = (), kind: str = "shell") -> TaskFacts:
    return TaskFacts(kind, selectors, place)


@pytest.mark.parametrize(
    ("who", "what", "expected"),
    [
        # today's behaviour: an account-wide token runs anything it matches
        (delegate(), task(PROD), None),
        (delegate(), task(None), None),
        # selectors, task type and draining
        (delegate(), task(PROD, ("pool",)), None),
        (delegate(), task(PROD, ("prod-pool",)), "selectors"),
        (delegate(), task(PROD, ("host-1",)), None),
        (delegate(), task(PROD, ("dlg_1",)), None),
        (delegate(), task(PROD, kind="http"), "task type"),
        (delegate(draining=True), task(PROD), "draining"),
        # an environment scope
        (delegate(PROD_ENV), task(PROD), None),
        (delegate(PROD_ENV), task(STAGING), "scope"),
        (delegate(PROD_ENV), task(OTHER_PROD), "scope"),
        # an application scope: all of its environments, no other application's
        (delegate(CHECKOUT), task(PROD), None),
        (delegate(CHECKOUT), task(STAGING), None),
        (delegate(CHECKOUT), task(OTHER_PROD), "scope"),
        # environment types
        (delegate(NON_PROD), task(STAGING), None),
        (delegate(NON_PROD), task(PROD), "scope"),
        (delegate(PROD_TYPE), task(OTHER_PROD), None),
        # a dedicated environment: only a scope naming it (or its application)
        (delegate(), task(VAULT), "scope"),
        (delegate(PROD_TYPE), task(VAULT), "scope"),
        (delegate(PROD_ENV), task(VAULT), "scope"),
        (delegate(CHECKOUT), task(VAULT), None),
        (delegate(DelegateScope(envs=frozenset({"env_vault"}))), task(VAULT), None),
        # a task outside any application: a narrowed token only when it names the delegate
        (delegate(NON_PROD), task(None), "scope"),
        (delegate(NON_PROD), task(None, ("dlg_1",)), None),
        # not by its name: the delegate picked it (a label's name would do as well)
        (delegate(NON_PROD), task(None, ("host-1",)), "scope"),
        # a damaged stored scope allows nothing
        (delegate(NOTHING), task(PROD), "scope"),
        (delegate(NOTHING), task(None), "scope"),
    ],
)
def test_refusal(who: DelegateFacts, what: TaskFacts, expected: str | None) -> None:
    assert refusal(who, what) == expected


def test_place_of_a_task_outside_any_application_is_none() -> None:
    assert place_of(None, None, {}) is None
    assert place_of("app_1", None, {}) is None


def test_place_of_reads_the_environment() -> None:
    envs = {"env_1": EnvFacts("app_1", "non_production", dedicated=False)}
    assert place_of("app_1", "env_1", envs) == Place("app_1", "env_1", "non_production", False)


def test_an_unknown_environment_is_judged_production_and_dedicated() -> None:
    assert place_of("app_1", "env_gone", {}) == Place("app_1", "env_gone", "production", True)
    # one of another application's environments, named with this one: the same
    envs = {"env_1": EnvFacts("app_2", "non_production")}
    assert place_of("app_1", "env_1", envs) == Place("app_1", "env_1", "production", True)


@pytest.mark.parametrize(
    "scope",
    [
        ACCOUNT_WIDE,
        PROD_ENV,
        CHECKOUT,
        NON_PROD,
        DelegateScope(env_types=frozenset({"production"}), selectors=frozenset({"a", "b"})),
        DelegateScope(selectors=frozenset()),
    ],
)
def test_scope_round_trips_through_its_stored_form(scope: DelegateScope) -> None:
    assert DelegateScope.load(scope.dump()) == scope


def test_an_account_wide_scope_is_stored_as_null() -> None:
    assert ACCOUNT_WIDE.dump() is None
    assert DelegateScope.load(None) == ACCOUNT_WIDE


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        "[]",
        '{"apps": []}',
        '{"apps": [], "envs": [], "env_types": ["staging"], "selectors": null}',
    ],
)
def test_a_damaged_stored_scope_allows_nothing(stored: str) -> None:
    assert DelegateScope.load(stored) == NOTHING


def test_disallowed_selectors_names_each_once_in_order() -> None:
    scope = DelegateScope(env_types=frozenset({"non_production"}), selectors=frozenset({"dev"}))
    assert disallowed_selectors(scope, ["prod-pool", "dev", "gpu", "prod-pool"]) == [
        "prod-pool",
        "gpu",
    ]
    assert disallowed_selectors(ACCOUNT_WIDE, ["anything"]) == []
    assert disallowed_selectors(DelegateScope(selectors=frozenset()), ["x"]) == ["x"]


def test_a_name_the_delegate_picked_neither_pins_nor_passes_for_a_selector_its_token_forbids() -> (
    None
):
    """A staging token's delegate registered under the name of a label ("vault") was handed
    account-wide work asking for that label, and the manager's own secret-manager test with
    the manager's credentials (an attack on a running manager found it)."""
    staging_pool = DelegateScope(
        env_types=frozenset({"non_production"}), selectors=frozenset({"stg-pool"})
    )
    named = DelegateFacts(
        id="dlg_1",
        name="vault",
        selectors=frozenset({"stg-pool"}),
        task_types=frozenset({"shell", "secret_op"}),
        scope=staging_pool,
    )
    # Work outside any application asking for the label: not its to take, nor by its id.
    assert refusal(named, task(None, ("vault",))) is not None
    assert refusal(named, task(None, ("vault",), "secret_op")) is not None
    assert refusal(named, task(None, ("dlg_1",))) is None
    # Within its scope the name stands in only for a selector its token lets it claim.
    assert refusal(named, task(STAGING, ("vault",))) == "selectors"
    allowed = DelegateFacts(
        id="dlg_2",
        name="stg-pool",
        selectors=frozenset(),
        task_types=frozenset({"shell"}),
        scope=staging_pool,
    )
    assert refusal(allowed, task(STAGING, ("stg-pool",))) is None
    # An account-wide token's delegate still answers to its name, as before.
    assert refusal(delegate(), task(PROD, ("host-1",))) is None
    assert refusal(delegate(), task(None, ("host-1",))) is None
