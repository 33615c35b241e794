"""Workload identity on each store: the OIDC key set (sealed, rotated with an overlap) and
the rules of issuing (the attempt must run, the credential must be the manager's)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest

from manager.access.directory import AppBody, Directory, EnvBody
from manager.core.workload_identity import (
    MAX_LIFETIME_S,
    TokenFacts,
    audience_problem,
    claims,
    parse_credential,
    request_credential,
    subject,
)
from manager.errors import Forbidden, Invalid, Unauthenticated
from manager.keys.masterkey import MasterKey
from manager.keys.oidc_keys import OIDC_KEYS, RETIRED_KEPT_S, OidcKeys
from manager.records import AttemptRecord
from manager.store.base import Store
from manager.tasks.id_tokens import IdTokens
from shared.protocol import TaskState
from tests.manager.store.test_store import WINDOW, delegate, task

KEY = b"k" * 32
ISSUER = "https://tether.example.com:8443"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _kids(jwks: dict[str, object]) -> list[str]:
    keys = jwks["keys"]
    assert isinstance(keys, list)
    return [k["kid"] for k in keys]


def test_the_credential_names_one_attempt_and_any_change_breaks_it() -> None:
    cred = request_credential(KEY, "tsk_abc", 3)
    found = parse_credential(KEY, cred)
    assert found is not None
    assert (found.task_id, found.attempt) == ("tsk_abc", 3)
    prefix, task_id, attempt, mac = cred.split(".")
    for forged in (
        f"{prefix}.tsk_abd.{attempt}.{mac}",
        f"{prefix}.{task_id}.4.{mac}",
        f"{prefix}.{task_id}.{attempt}.{mac[:-1]}A",
        f"tir2.{task_id}.{attempt}.{mac}",
        f"{prefix}.{task_id}.-1.{mac}",
        "",
        "tir1...",
    ):
        assert parse_credential(KEY, forged) is None, forged
    assert parse_credential(b"o" * 32, cred) is None


def test_claims_cap_the_lifetime_and_the_subject_format() -> None:
    facts = TokenFacts("tsk_1", 2, "checkout", "prod", "production", "d1", "usr_1")
    body = claims(facts, issuer=ISSUER, audience="bao", now=100.7, jti="j", lifetime_s=3600)
    assert body["exp"] - body["iat"] == MAX_LIFETIME_S
    assert body["sub"] == "app:checkout:env:prod:task"
    assert "runbook" not in body
    assert subject("checkout", "prod", "deploy") == "app:checkout:env:prod:runbook:deploy"
    assert audience_problem("a b") is not None
    assert audience_problem("") is not None
    assert audience_problem("x" * 257) is not None
    assert audience_problem("sts.amazonaws.com") is None


async def test_keys_are_sealed_and_a_rotation_keeps_the_old_key_published(store: Store) -> None:
    clock = Clock()
    keys = OidcKeys(store, MasterKey(b"m" * 32), clock)
    token = await keys.sign({"sub": "x", "aud": "a"})
    first = jwt.get_unverified_header(token)["kid"]
    stored = await store.get_setting(OIDC_KEYS)
    assert stored is not None
    assert stored.startswith("sealed:")
    # The private scalar is nowhere in the stored value, in clear or in base64.
    assert '"d"' not in stored
    assert b'"d"' not in base64.b64decode(stored[7:])
    assert _kids(await keys.jwks()) == [first]
    # Another replica (another OidcKeys over the same store) signs with the same key.
    assert (
        jwt.get_unverified_header(await OidcKeys(store, MasterKey(b"m" * 32), clock).sign({}))[
            "kid"
        ]
        == first
    )

    rotated = await keys.rotate()
    assert rotated.current != first
    assert _kids(await keys.jwks()) == [first, rotated.current]
    new_token = await keys.sign({"sub": "x", "aud": "a"})
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.current
    # Both verify against the published set.
    published = jwt.PyJWKSet.from_dict(await keys.jwks())
    for t in (token, new_token):
        kid = jwt.get_unverified_header(t)["kid"]
        key = next(k for k in published.keys if k.key_id == kid)
        assert jwt.decode(t, key.key, algorithms=["ES256"], audience="a")["sub"] == "x"

    # Past the overlap, the retired key is no longer published, and the next rotation drops it.
    clock.now += RETIRED_KEPT_S
    assert _kids(await keys.jwks()) == [rotated.current]
    again = await keys.rotate()
    assert again.dropped == [first]
    assert _kids(await keys.jwks()) == [rotated.current, again.current]
    # A data dir with another master key cannot open them (nor sign).
    with pytest.raises(Exception, match="do not open"):
        await OidcKeys(store, MasterKey(b"o" * 32), clock).sign({})


async def _place(store: Store) -> tuple[str, str]:
    d = Directory(store)
    app = await d.apps.insert(AppBody(name="checkout"))
    env = await d.envs.insert(EnvBody(app_id=app.id, name="prod", type="production"))
    return app.id, env.id


async def _running(store: Store, task_id: str, attempt: int, **kw: Any) -> None:
    await store.insert_task(task(task_id, **kw), idempotency_window=WINDOW)
    for n in range(1, attempt + 1):
        updated = await store.update_task(
            task_id,
            expect_state=TaskState.QUEUED if n == 1 else TaskState.RUNNING,
            expect_attempt=n - 1,
            changes={"state": TaskState.RUNNING, "attempt": n, "delegate_id": "dlg_1"},
            start_attempt=AttemptRecord(task_id, n, "dlg_1", 1_010.0),
        )
        assert updated is not None


async def test_a_token_only_while_the_attempt_runs(store: Store) -> None:
    clock = Clock()
    await store.upsert_delegate(delegate())
    app_id, env_id = await _place(store)
    issuer = IdTokens(
        store, OidcKeys(store, MasterKey(b"m" * 32), clock), request_key=KEY, issuer=ISSUER,
        clock=clock,
    )  # fmt: skip
    # The lease moved on: attempt 2 runs, attempt 1's credential is worth nothing.
    await _running(store, "tsk_moved", 2, app_id=app_id, env_id=env_id, submitted_by="usr_1")
    with pytest.raises(Unauthenticated):
        await issuer.issue(request_credential(KEY, "tsk_moved", 1), "bao")
    token = await issuer.issue(request_credential(KEY, "tsk_moved", 2), "bao")
    body = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (body["sub"], body["attempt"], body["delegate"], body["submitter"]) == (
        "app:checkout:env:prod:task",
        2,
        "build-01",
        "usr_1",
    )
    assert (body["iss"], body["aud"], body["exp"] - body["iat"]) == (ISSUER, "bao", 300)
    with pytest.raises(Invalid):
        await issuer.issue(request_credential(KEY, "tsk_moved", 2), None)
    with pytest.raises(Unauthenticated):
        await issuer.issue(None, "bao")
    # The task ended: refused.
    done = await store.update_task(
        "tsk_moved",
        expect_state=TaskState.RUNNING,
        expect_attempt=2,
        changes={"state": TaskState.SUCCEEDED},
        end_attempt_status="succeeded",
        end_attempt_at=1_020.0,
    )
    assert done is not None
    with pytest.raises(Unauthenticated):
        await issuer.issue(request_credential(KEY, "tsk_moved", 2), "bao")
    # A task outside any application has no identity to give.
    await _running(store, "tsk_loose", 1)
    with pytest.raises(Forbidden):
        await issuer.issue(request_credential(KEY, "tsk_loose", 1), "bao")
    # A task that does not exist: the same refusal as one that ended.
    with pytest.raises(Unauthenticated):
        await issuer.issue(request_credential(KEY, "tsk_none", 1), "bao")
