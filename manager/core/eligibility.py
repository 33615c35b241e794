"""Which delegate may be handed which task: one pure decision for every hand-out path.

A delegate token carries a scope (applications, environments, environment types, and the
selectors a delegate using it may claim). The manager assigns (over the stream or a
long-poll), lets acquire, and delivers the secrets of a task only to a delegate that passes
:func:`refusal`.

A task outside any application (a profile run, the manager's own secret operations, an
administrator's task) goes to a delegate with a narrowed scope only when it names that
delegate by its id among its selectors: a token narrowed to some environments must not pick
up work meant for the whole account. Not by its name: a delegate picks its own name, and one
named after a label (``vault``) would take every such task meant for the delegates that carry
the label. For the same reason a name counts as a selector only when its token lets it claim
that selector.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, get_args

from manager.schemas.grants import EnvType

__all__ = [
    "ACCOUNT_WIDE",
    "NOTHING",
    "Delegate",
    "DelegateFacts",
    "DelegateScope",
    "EnvFacts",
    "Place",
    "TaskFacts",
    "covers",
    "disallowed_selectors",
    "place_of",
    "refusal",
    "refusal_of",
]

_ENV_TYPES: tuple[str, ...] = get_args(EnvType)


@dataclass(frozen=True, slots=True)
class DelegateScope:
    """What a delegate token allows. Ids, not names: an environment deleted and made again
    under the same name is a new environment, which the old scope does not reach."""

    apps: frozenset[str] = frozenset()  # application ids: every environment of each
    envs: frozenset[str] = frozenset()  # environment ids
    env_types: frozenset[EnvType] = frozenset()
    # The selectors a delegate may claim; None: any.
    selectors: frozenset[str] | None = None

    @property
    def account_wide(self) -> bool:
        """No place restriction (the behaviour of a token made without a scope)."""
        return not (self.apps or self.envs or self.env_types)

    def dump(self) -> str | None:
        """The stored form; None for the default (account-wide, any selector)."""
        if self == ACCOUNT_WIDE:
            return None
        return json.dumps(
            {
                "apps": sorted(self.apps),
                "envs": sorted(self.envs),
                "env_types": sorted(self.env_types),
                "selectors": None if self.selectors is None else sorted(self.selectors),
            },
            separators=(",", ":"),
        )

    @staticmethod
    def load(text: str | None) -> DelegateScope:
        """The scope stored by :meth:`dump`. A malformed one is read as allowing nothing,
        never as account-wide: a damaged row must not widen what a token may do."""
        if text is None:
            return ACCOUNT_WIDE
        try:
            raw = json.loads(text)
            types = [str(t) for t in raw["env_types"]]
            selectors = raw["selectors"]
            scope = DelegateScope(
                apps=frozenset(str(a) for a in raw["apps"]),
                envs=frozenset(str(e) for e in raw["envs"]),
                env_types=frozenset(t for t in types if t in _ENV_TYPES),  # type: ignore[misc]
                selectors=None if selectors is None else frozenset(map(str, selectors)),
            )
        except (ValueError, KeyError, TypeError):
            return NOTHING
        # An unknown environment type would otherwise be dropped, widening nothing but
        # silently changing the scope: read the row as allowing nothing instead.
        return scope if len(scope.env_types) == len(set(types)) else NOTHING


ACCOUNT_WIDE = DelegateScope()
# Places no task can have: a scope that covers none, and claims no selector.
NOTHING = DelegateScope(envs=frozenset({""}), selectors=frozenset())


@dataclass(frozen=True, slots=True)
class EnvFacts:
    app_id: str
    type: EnvType
    # Only delegates whose token names this environment (or its application) run its tasks.
    dedicated: bool = False


@dataclass(frozen=True, slots=True)
class Place:
    app_id: str
    env_id: str
    env_type: EnvType
    dedicated: bool


def place_of(app_id: str | None, env_id: str | None, envs: Mapping[str, EnvFacts]) -> Place | None:
    """Where a task runs, from its ids; None outside any application. An environment
    deleted since is judged the strictest way: production, dedicated."""
    if app_id is None or env_id is None:
        return None
    facts = envs.get(env_id)
    if facts is None or facts.app_id != app_id:
        return Place(app_id, env_id, "production", True)
    return Place(app_id, env_id, facts.type, facts.dedicated)


class Delegate(Protocol):
    """What the decision reads of a delegate (dispatch's candidates are read as they are, so
    a round judging every queued task against every delegate allocates nothing)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def selectors(self) -> frozenset[str]: ...
    @property
    def task_types(self) -> frozenset[str]: ...
    @property
    def scope(self) -> DelegateScope: ...
    @property
    def draining(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class DelegateFacts:
    id: str
    name: str
    selectors: frozenset[str]
    task_types: frozenset[str]
    scope: DelegateScope
    draining: bool = False


@dataclass(frozen=True, slots=True)
class TaskFacts:
    type: str
    selectors: tuple[str, ...]
    place: Place | None


def covers(scope: DelegateScope, place: Place | None, *, pinned: bool) -> bool:
    """Whether a token's scope reaches a task's place. ``pinned``: the task names the
    delegate itself by its id."""
    if place is None:
        return scope.account_wide or pinned
    named = place.app_id in scope.apps or place.env_id in scope.envs
    if place.dedicated:
        return named
    return scope.account_wide or named or place.env_type in scope.env_types


def refusal(delegate: Delegate, task: TaskFacts) -> str | None:
    """Why ``delegate`` may not run ``task``; None when it may. The reason is for the
    manager's log only: the delegate is told nothing about a task it may not run."""
    return refusal_of(delegate, task.type, task.selectors, task.place)


def refusal_of(
    delegate: Delegate, task_type: str, selectors: Sequence[str], place: Place | None
) -> str | None:
    """:func:`refusal` without building a :class:`TaskFacts`: dispatch asks it for every
    queued task and every delegate on each round, so it allocates nothing."""
    if delegate.draining:
        return "draining"
    if task_type not in delegate.task_types:
        return "task type"
    # The id and the name count as selectors: a task can ask for one delegate. The name is
    # the delegate's own pick at registration, so it counts only as a selector its token
    # lets it claim: named "vault", a delegate of a token limited to "stg-pool" would
    # otherwise answer to every task that asks for the label "vault".
    name, own_id, offered, scope = delegate.name, delegate.id, delegate.selectors, delegate.scope
    name_counts = scope.selectors is None or name in scope.selectors
    for s in selectors:
        if s not in offered and s != own_id and not (name_counts and s == name):
            return "selectors"
    if place is None and scope.account_wide:
        return None
    # Only the id pins a task to a narrowed token's delegate beyond its scope: the manager
    # gave it. A name the delegate picked is no sign the submitter meant that delegate.
    pinned = own_id in selectors
    if not covers(scope, place, pinned=pinned):
        return "scope"
    return None


def disallowed_selectors(scope: DelegateScope, claimed: Iterable[str]) -> list[str]:
    """The claimed selectors the token does not allow, in the order claimed."""
    if scope.selectors is None:
        return []
    allowed = scope.selectors
    return [s for s in dict.fromkeys(claimed) if s not in allowed]
