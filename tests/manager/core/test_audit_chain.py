"""The audit event model: its canonical hash, the chain and its verification (also against
rows edited or deleted in the database itself), and the redaction of secrets in diffs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from typing import Any

import pytest
import yaml

from manager.core.audit_chain import (
    EVENT_FIELDS,
    GENESIS,
    MAX_DIFF_STRING,
    REDACTED,
    AuditEvent,
    Broken,
    canonical,
    created,
    draft,
    event_hash,
    is_sensitive_key,
    redact,
    seal,
    verify,
    yaml_diff,
)
from manager.core.identity import Actor
from manager.store.base import Store
from shared.masking import MASK, Masker
from tests.manager.conftest import StoreMaker

ADMIN = Actor("api_key", "key_1", "admin")
SECRET = "pa55-Word/that+must=never-show-9f3a"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDk8ZtOqJ3gBvsJ0nL4p5x2bQxqY1c7mHqfZzXb0hVhxQAAAJjL2m7Xy9pu\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
# SHA-256 of the fixed event below, computed independently when the form was defined.
PINNED_HASH = "dae9a73997b29d2834bc81cc85a8c1a0597d952bd4909705e226c69734f3dd29"


def event_draft(n: int = 1, **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "ts": 1_700_000_000.25 + n,
        "method": "POST",
        "path": "/api/v1/tokens",
        "client_ip": "127.0.0.1",
        "resource_type": "token",
        "resource_id": f"tok_{n}",
        "resource_name": f"build-{n}",
        "action": "create",
        "summary": f"created delegate token build-{n}",
        "after": {"name": f"build-{n}"},
    }
    fields.update(kw)
    return draft(ADMIN, **fields)


def chain(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for i in range(1, n + 1):
        events.append(seal(event_draft(i), i, events[-1].hash if events else GENESIS))
    return events


# -- the canonical form and the hash ------------------------------------------------------------


def test_canonical_form_is_sorted_compact_ascii_json_without_the_hash() -> None:
    e = seal(event_draft(summary="café ✓"), 1, GENESIS)
    # An unkeyed event (as before keying) leaves out key_id, so old hashes still hold.
    data = {f: getattr(e, f) for f in EVENT_FIELDS if f not in ("hash", "key_id")}
    data["ts"] = 1_700_000_001_250_000  # integer microseconds
    expected = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical(e) == expected.encode("ascii")
    assert b'"hash"' not in canonical(e)
    assert b"\\u00e9" in canonical(e)
    assert e.hash == hashlib.sha256(expected.encode()).hexdigest()


def test_the_hash_of_a_fixed_event_never_changes() -> None:
    """Pinned: a change to the canonical form would break every stored chain."""
    fixed = {
        "seq": 7,
        "id": "aud_1",
        "ts": 1_700_000_000.123456,
        "actor_kind": "system",
        "actor_id": "system",
        "actor_name": "system",
        "method": "CLI",
        "path": "tether-manager keys rotate",
        "client_ip": "local",
        "resource_type": "master_key",
        "resource_id": "k2",
        "resource_name": "k2",
        "app": None,
        "action": "rotate",
        "summary": "rotated",
        "diff": "before: null\nafter: {}\n",
        "prev_hash": GENESIS,
    }
    assert canonical(fixed).startswith(b'{"action":"rotate","actor_id":"system",')
    assert b'"ts":1700000000123456}' in canonical(fixed)
    assert event_hash(fixed) == PINNED_HASH


def test_a_none_app_is_null_in_the_canonical_form() -> None:
    e = seal(event_draft(), 1, GENESIS)
    assert e.app is None
    assert b'"app":null' in canonical(e)


@pytest.mark.parametrize("name", [f for f in EVENT_FIELDS if f != "hash"])
def test_every_field_but_the_hash_is_covered_by_it(name: str) -> None:
    e = seal(event_draft(), 1, GENESIS)
    value = getattr(e, name)
    changed_value: Any = (
        value + 1
        if isinstance(value, int)
        else value + 0.001
        if isinstance(value, float)
        else "shop"
        if value is None
        else value + "x"
    )
    changed = dataclasses.replace(e, **{name: changed_value})
    assert event_hash(changed) != e.hash


def test_sealing_links_each_event_to_the_one_before() -> None:
    events = chain(3)
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert all(e.hash == event_hash(e) for e in events)


# -- verification ------------------------------------------------------------------------------


def test_an_intact_chain_verifies() -> None:
    events = chain(5)
    assert verify(events) is None
    assert verify(events, (5, events[-1].hash)) is None
    assert verify([]) is None
    assert verify([], (0, GENESIS)) is None


def test_an_edited_event_breaks_its_own_hash() -> None:
    events = chain(4)
    events[2] = dataclasses.replace(events[2], summary="nothing to see")
    broken = verify(events)
    assert broken is not None
    assert broken.seq == 3
    assert broken.reason.startswith("hash mismatch")


def test_an_edited_and_rehashed_event_breaks_the_next_link() -> None:
    events = chain(4)
    forged = dataclasses.replace(events[1], actor_name="someone else")
    events[1] = dataclasses.replace(forged, hash=event_hash(forged))
    broken = verify(events)
    assert broken is not None
    assert broken.seq == 3
    assert broken.reason.startswith("prev_hash mismatch")


@pytest.mark.parametrize("gone", [0, 2])
def test_a_deleted_event_is_a_gap(gone: int) -> None:
    events = chain(4)
    del events[gone]
    assert verify(events) == Broken(
        gone + 1, f"gap in seq: event {gone + 1} is missing (next found: {gone + 2})"
    )


def test_a_deleted_tail_shows_against_the_head() -> None:
    events = chain(4)
    head = (4, events[-1].hash)
    broken = verify(events[:2], head)
    assert broken is not None
    assert broken.seq == 3
    assert "head is at 4" in broken.reason


def test_a_head_with_another_hash_is_reported() -> None:
    events = chain(2)
    broken = verify(events, (2, "f" * 64))
    assert broken is not None
    assert broken.reason.startswith("head mismatch")


# -- tampering in the database itself ----------------------------------------------------------


async def tamper(maker: StoreMaker, sql: str) -> None:
    """Edit the stored trail behind the store's back, as someone with database access might."""
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()
    else:
        await maker.fetch(sql)


async def stored_trail(store: Store) -> list[AuditEvent]:
    return [e async for e in store.audit_events_all()]


@pytest.fixture
async def trail(new_store: StoreMaker) -> Any:
    store = new_store()
    await store.open()
    for n in range(1, 6):
        await store.append_audit(event_draft(n))
    yield new_store, store
    await store.close()


async def test_a_row_edited_in_the_database_is_found(trail: Any) -> None:
    maker, store = trail
    assert verify(await stored_trail(store), await store.audit_head()) is None
    await tamper(maker, "UPDATE audit_events SET summary = 'all quiet' WHERE seq = 3")
    broken = verify(await stored_trail(store), await store.audit_head())
    assert broken is not None
    assert (broken.seq, broken.reason.split(":")[0]) == (3, "hash mismatch")


async def test_a_row_deleted_in_the_database_is_a_gap(trail: Any) -> None:
    maker, store = trail
    await tamper(maker, "DELETE FROM audit_events WHERE seq = 2")
    broken = verify(await stored_trail(store), await store.audit_head())
    assert broken is not None
    assert broken.seq == 2
    assert broken.reason.startswith("gap in seq")


async def test_newest_rows_deleted_in_the_database_show_against_the_head(trail: Any) -> None:
    maker, store = trail
    await tamper(maker, "DELETE FROM audit_events WHERE seq >= 4")
    broken = verify(await stored_trail(store), await store.audit_head())
    assert broken is not None
    assert broken.seq == 4
    assert "head is at 5" in broken.reason


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "value",
        "value_base64",
        "fields",
        "password",
        "DB_PASSWORD",
        "token",
        "key_hash",
        "token_hash",
        "secret",
        "client_secret",
        "credentials",
        "sealed_env",
        "secret_env_sealed",
        "private_key",
        "ssh_key",
        "Authorization",
        "X-Api-Key",
        "passphrase",
        "envelope",
        "session_token",
    ],
)
def test_sensitive_keys_are_recognised(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "name",
        "secret_env_names",
        "credentials_secret",
        "credential_secrets",
        "public_key",
        "idempotency_key",
        "script",
        "selectors",
    ],
)
def test_names_and_public_material_are_not_redacted(key: str) -> None:
    assert not is_sensitive_key(key)


def test_values_under_sensitive_keys_are_redacted_at_any_depth() -> None:
    data = {
        "name": "db",
        "value": SECRET,
        "fields": {"key": PEM, "user": "deploy"},
        "payload": {
            "headers": {"Authorization": f"Bearer {SECRET}", "Accept": "*/*"},
            "env": {"DB_PASSWORD": SECRET, "REGION": "eu"},
        },
        "items": [{"token": SECRET}, {"other": "kept"}],
        "credentials_secret": "vault-token",
        "password": None,
    }
    out = redact(data)
    assert out == {
        "name": "db",
        "value": REDACTED,
        "fields": REDACTED,
        "payload": {
            "headers": {"Authorization": REDACTED, "Accept": "*/*"},
            "env": {"DB_PASSWORD": REDACTED, "REGION": "eu"},
        },
        "items": [{"token": REDACTED}, {"other": "kept"}],
        "credentials_secret": "vault-token",
        "password": None,  # that there is none is no secret
    }


def test_the_diff_is_yaml_of_before_and_after() -> None:
    text = yaml_diff({"draining": False}, {"draining": True, "value": SECRET})
    assert yaml.safe_load(text) == {
        "before": {"draining": False},
        "after": {"draining": True, "value": REDACTED},
    }
    assert SECRET not in text


def test_the_masker_hides_a_secret_anywhere_in_the_diff() -> None:
    masker = Masker([SECRET])
    script = f"curl -u admin:{SECRET} https://db.internal/ && echo done"
    text = yaml_diff(None, {"script": script}, masker)
    assert SECRET not in text
    assert MASK.decode() in text


def test_a_multi_line_secret_is_masked_line_by_line() -> None:
    masker = Masker([PEM])
    script = f"cat > key <<EOF\n{PEM}\nEOF\nssh -i key host"
    text = yaml_diff(None, {"script": script}, masker)
    for line in PEM.splitlines():
        assert line not in text
    assert yaml.safe_load(text)["after"]["script"].startswith("cat > key <<EOF\n")


def test_a_long_line_is_not_folded_around_a_secret() -> None:
    """YAML folds long scalars at spaces by default, which could split a secret across
    lines out of the masker's sight; the diff never folds, and masks before dumping."""
    masker = Masker([SECRET])
    words = " ".join(["word"] * 40)
    value = f'"{words} {SECRET} {words}": {words}'  # quoting forces a double-quoted scalar
    text = yaml_diff(None, {"note": value}, masker)
    assert SECRET not in text
    assert SECRET[: len(SECRET) // 2] not in text
    assert SECRET[len(SECRET) // 2 :] not in text
    assert len([ln for ln in text.splitlines() if "word" in ln]) == 1


def test_a_long_string_is_cut_after_masking() -> None:
    masker = Masker([SECRET])
    value = "x" * (MAX_DIFF_STRING - 10) + SECRET + "y" * 100
    out = redact({"script": value}, masker)["script"]
    assert SECRET[:10] not in out
    assert out.endswith("more characters)")


def test_draft_masks_free_text_and_cleans_what_a_database_refuses() -> None:
    masker = Masker([SECRET])
    d = draft(
        ADMIN,
        ts=1.0,
        method="POST",
        path="/api/v1/x",
        client_ip="::1",
        resource_type="profile",
        resource_id="p\x00",
        resource_name=f"name {SECRET}",
        action="update",
        summary="bad \ud800 text",
        after={"script": f"echo {SECRET}"},
        masker=masker,
    )
    assert SECRET not in d.resource_name
    assert SECRET not in d.diff
    assert "\x00" not in d.resource_id
    d.summary.encode("utf-8")  # no unpaired surrogate left


# -- a create: what was made, without a diff against nothing --------------------------------


def _create(after: Any, masker: Masker | None = None) -> str:
    return str(event_draft(after=after, masker=masker).diff)


def test_a_create_records_what_was_made_as_json_with_no_yaml_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_yaml(*_args: object, **_kw: object) -> str:
        raise AssertionError("a create must not dump YAML")

    monkeypatch.setattr(yaml, "dump", no_yaml)
    after = {"id": "tsk_1", "payload": {"type": "shell", "script": "echo 'hi'\ntrue"}}
    text = _create(after, Masker([SECRET]))
    assert json.loads(text) == {"created": after}
    assert "\n" not in text  # one line: the script's newline is escaped
    # An update still gets its YAML diff (and so meets the stub).
    with pytest.raises(AssertionError, match="must not dump YAML"):
        yaml_diff({"name": "a"}, {"name": "b"})


def test_a_create_redacts_sensitive_keys_and_masks_values_anywhere() -> None:
    masker = Masker([SECRET, PEM])
    after = {
        "payload": {"script": f"curl -u admin:{SECRET} https://db/", "env": {"TOKEN": "t0k3n"}},
        "note": f"cat > key <<EOF\n{PEM}\nEOF",
        # Keys too: the masker runs over the whole text at the end.
        "labels": {SECRET: "x"},
        "password": "hunter2-but-longer",
    }
    text = _create(after, masker)
    made = json.loads(text)["created"]
    for line in [SECRET, *PEM.splitlines()]:
        assert line not in text
    assert MASK.decode() in made["payload"]["script"]
    assert made["payload"]["env"]["TOKEN"] == REDACTED
    assert made["password"] == REDACTED
    assert "hunter2" not in text


def test_a_long_string_in_a_create_is_cut_after_masking() -> None:
    masker = Masker([SECRET])
    value = "x" * (MAX_DIFF_STRING - 10) + SECRET + "y" * 100
    text = _create({"script": value}, masker)
    assert SECRET[:10] not in text
    assert json.loads(text)["created"]["script"].endswith("more characters)")


def test_a_create_masks_every_known_value_in_its_one_pass_over_the_text() -> None:
    """A create's event masks its JSON text as a whole, not each string: a value is masked
    wherever it sits, in the JSON-escaped form too, and one cut at MAX_DIFF_STRING is
    masked before the cut, so no half of it is left."""
    plain, quoted = "hunter2-plain-value", 'line one "quoted"\nline two'
    masker = Masker([plain, quoted])
    long_text = "x" * (MAX_DIFF_STRING - 5) + plain + "y" * 10
    text = created(
        {"name": f"uses {plain}", "nested": [{"note": quoted}], "long": long_text}, masker
    )
    assert plain not in text
    assert plain[:5] not in text.split("x" * 20)[-1]  # nothing of it left where it was cut
    assert json.dumps(quoted)[1:-1] not in text
    assert "line one" not in text
    assert MASK.decode() in text
    assert json.loads(text)["created"]["name"].startswith("uses ")
