"""SAML 2.0 sign-in against an IdP run in the test with pysaml2's server: a good login with
its groups and MFA context, and every refusal a 4xx page with a failed-login record: a
forged signature, an unsigned response, an expired assertion, a replay, another audience,
an unsolicited response, and XML signature-wrapping (an extra unsigned assertion, the
signed assertion moved under an unsigned one)."""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.access.directory import Directory, GroupBody
from manager.api.failed_logins import FAILED_LOGINS
from manager.schemas.auth import verifier_hash
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager, sqlite_store
from tests.manager.saml_idp import MFA_CONTEXT, Idp, key_pair

__all__ = ["sqlite_store"]

SP = "https://tether.example.test/saml"
VERIFIER = "a-verifier-the-cli-made-and-keeps-to-itself-0123456789"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    tmp = tmp_path_factory.mktemp("idp")
    key, cert = key_pair(tmp, "idp")
    return Idp(tmp, key, cert)


@pytest.fixture
async def m(tmp_path: Path, store: Store, idp: Idp) -> AsyncIterator[Manager]:
    await Directory(store).groups.insert(
        GroupBody(name="auditors", account_permissions=["view_audit"])
    )
    # The real clock: pysaml2 judges the assertion's times by it.
    async with manager(tmp_path, store, Clock(time.time())) as replica:
        settings = {
            "sp_entity_id": SP,
            "acs_url": acs_url(replica),
            "idp_metadata": idp.metadata(),
            "group_mapping": {"sec-auditors": "auditors"},
        }
        status, body = await replica.call("PUT", "/api/v1/auth/saml", settings)
        assert status == 200, body
        yield replica


def acs_url(m: Manager) -> str:
    return str(m.client.make_url("/api/v1/auth/saml/acs"))


async def sp_metadata(m: Manager) -> str:
    resp = await m.client.get("/api/v1/auth/saml/metadata")
    assert resp.status == 200
    return await resp.text()


async def start(m: Manager) -> dict[str, Any]:
    body = {"verifier_hash": verifier_hash(VERIFIER), "client_name": "tether CLI, pat@laptop"}
    resp = await m.client.post("/api/v1/auth/saml/start", json=body)
    assert resp.status == 200, await resp.text()
    started: dict[str, Any] = await resp.json()
    return started


async def respond(
    m: Manager, idp: Idp, *, transform: Any = None, **over: Any
) -> tuple[int, str, dict[str, Any]]:
    """A login: the manager's AuthnRequest, the IdP's Response (``over`` changes it), the
    browser's post to the ACS. Answers the ACS page's status and text, and the start."""
    started = await start(m)
    fields: dict[str, Any] = {
        "in_response_to": idp.request_id(started["authorize_url"]),
        "acs_url": acs_url(m),
        "audience": SP,
        "subject": "pat-at-idp",
        "attributes": {
            "email": ["Pat@Example.com"],
            "displayName": ["Pat"],
            "groups": ["sec-auditors", "other"],
        },
    }
    fields.update(over)
    encoded = idp.response(await sp_metadata(m), **fields)
    if transform is not None:
        encoded = base64.b64encode(transform(base64.b64decode(encoded).decode()).encode()).decode()
    form = {"SAMLResponse": encoded, "RelayState": started["state"]}
    resp = await m.client.post("/api/v1/auth/saml/acs", data=form)
    return resp.status, await resp.text(), started


async def approve_and_poll(m: Manager, page: str, state: str) -> dict[str, Any]:
    action = re.search(r'<form method="post" action="([^"]+)">', page)
    assert action is not None, page
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))
    form = {k: html.unescape(v) for k, v in fields.items()}
    resp = await m.client.post(html.unescape(action.group(1)), data={**form, "decision": "approve"})
    assert resp.status == 200
    resp = await m.client.post("/api/v1/auth/sso/poll", json={"state": state, "verifier": VERIFIER})
    assert resp.status == 200, await resp.text()
    done: dict[str, Any] = await resp.json()
    return done


async def test_a_login_makes_the_user_with_the_mapped_groups(m: Manager, idp: Idp) -> None:
    status, page, started = await respond(m, idp)
    assert status == 200, page
    assert "pat@example.com" in page
    done = await approve_and_poll(m, page, started["state"])
    assert done["user"]["email"] == "pat@example.com"
    token = done["token"]
    assert (await m.call("GET", "/api/v1/audit", key=token))[0] == 200
    assert (await m.call("GET", "/api/v1/tokens", key=token))[0] == 403
    status, user = await m.call("GET", "/api/v1/users/pat@example.com")
    assert user["groups"] == ["auditors"]
    # The settings answer shows the metadata; the trail summarises it.
    status, trail = await m.call("GET", "/api/v1/audit")
    assert any(e["resource_type"] == "saml_settings" for e in trail["events"])


async def test_local_2fa_is_kept_unless_the_idp_asserts_mfa(m: Manager, idp: Idp) -> None:
    import pyotp

    status, page, started = await respond(m, idp)
    done = await approve_and_poll(m, page, started["state"])
    token = done["token"]
    # Pat enrols in 2FA here; an SSO user has no password to give again.
    from manager.access.login import LOGINS

    logins = m.client.app[LOGINS]
    user = await logins.directory.users.by_key("pat@example.com")
    assert user is not None
    secret, _ = await logins.totp_enrol(user)
    code = pyotp.TOTP(secret).at(time.time())
    status, body = await m.call("POST", "/api/v1/auth/totp/confirm", {"code": code}, key=token)
    assert status == 200, body
    status, page, started = await respond(m, idp)
    assert (await approve_and_poll(m, page, started["state"]))["restricted"] == "totp"
    status, page, started = await respond(m, idp, context=MFA_CONTEXT)
    assert (await approve_and_poll(m, page, started["state"]))["restricted"] is None


async def refused(m: Manager, idp: Idp, why: str, **over: Any) -> str:
    status, page, _ = await respond(m, idp, **over)
    assert status == 400, page
    assert why in page, page
    assert "Traceback" not in page
    return page


async def test_a_forged_signature_is_refused(m: Manager, idp: Idp, tmp_path: Path) -> None:
    key, cert = key_pair(tmp_path, "attacker")
    await refused(m, idp, "was refused", key=key, cert=cert)
    # The refusal is in the trail as a failed login.
    await m.client.app[FAILED_LOGINS].flush(everything=True)
    _status, trail = await m.call("GET", "/api/v1/audit")
    assert any(e["action"] == "login_failed" for e in trail["events"]), trail


async def test_an_unsigned_response_is_refused(m: Manager, idp: Idp) -> None:
    await refused(m, idp, "was refused", sign_assertion=False, sign_response=False)


async def test_a_signed_response_around_an_unsigned_assertion_is_accepted(
    m: Manager, idp: Idp
) -> None:
    status, page, _ = await respond(m, idp, sign_assertion=False, sign_response=True)
    assert status == 200, page


async def test_an_expired_assertion_is_refused(m: Manager, idp: Idp) -> None:
    await refused(m, idp, "was refused", lifetime=-10)


async def test_another_audience_is_refused(m: Manager, idp: Idp) -> None:
    await refused(m, idp, "was refused", audience="https://another-sp.example.test")


async def test_another_recipient_is_refused(m: Manager, idp: Idp) -> None:
    await refused(m, idp, "Sign-in failed", acs_url="https://another-sp.example.test/acs")


async def test_an_unsolicited_response_is_refused(m: Manager, idp: Idp) -> None:
    await refused(m, idp, "Sign-in failed", in_response_to="id-of-no-request-here")


async def test_a_replayed_assertion_is_refused(m: Manager, idp: Idp) -> None:
    status, _page, started = await respond(m, idp)
    assert status == 200
    posted: list[str] = []

    def keep(xml: str) -> str:
        posted.append(xml)
        return xml

    status, _page, started = await respond(m, idp, transform=keep)
    assert status == 200
    # The same Response again at the same pending login: already completed.
    again = {"SAMLResponse": base64.b64encode(posted[0].encode()).decode()}
    resp = await m.client.post(
        "/api/v1/auth/saml/acs", data={**again, "RelayState": started["state"]}
    )
    assert resp.status == 400
    # And its assertion, should it reach the check again: remembered until it expires.
    from manager.api.saml import saml_of

    class _Req(dict[Any, Any]):
        app = m.client.app

    saml = saml_of(_Req())  # type: ignore[arg-type]
    settings = await saml.configured()
    request_id = re.search(r'InResponseTo="([^"]+)"', posted[0])
    assert request_id is not None
    with pytest.raises(Exception, match="replay"):
        await saml.verify(settings, again["SAMLResponse"], request_id.group(1))


def _prefix(xml: str, local: str) -> str:
    found = re.search(rf"<(\w+):{local}[ >]", xml)
    assert found is not None, xml
    return found.group(1)


def _signed_assertion(xml: str) -> tuple[int, int, str]:
    p = _prefix(xml, "Assertion")
    start = xml.index(f"<{p}:Assertion")
    end = xml.index(f"</{p}:Assertion>") + len(f"</{p}:Assertion>")
    return start, end, p


def _evil(assertion: str) -> str:
    """A copy of the assertion for someone else, its signature dropped."""
    ds = _prefix(assertion, "Signature")
    evil = re.sub(rf"<{ds}:Signature[ >].*?</{ds}:Signature>", "", assertion, flags=re.S)
    evil = evil.replace("pat-at-idp", "root-at-idp").replace("Pat@Example.com", "root@example.com")
    return re.sub(r' ID="([^"]+)"', r' ID="evil\1"', evil, count=1)


def extra_unsigned_assertion(xml: str) -> str:
    start, end, _ = _signed_assertion(xml)
    return xml[:start] + _evil(xml[start:end]) + xml[start:]


def signed_assertion_moved(xml: str) -> str:
    start, end, p = _signed_assertion(xml)
    signed = xml[start:end]
    evil = _evil(signed)
    close = evil.rindex(f"</{p}:Assertion>")
    wrapped = evil[:close] + f"<{p}:Advice>" + signed + f"</{p}:Advice>" + evil[close:]
    return xml[:start] + wrapped + xml[end:]


@pytest.mark.parametrize("wrap", [extra_unsigned_assertion, signed_assertion_moved])
async def test_signature_wrapping_signs_nobody_in_as_someone_else(
    m: Manager, idp: Idp, wrap: Any
) -> None:
    status, page, started = await respond(m, idp, transform=wrap)
    assert "root@example.com" not in page
    if status == 200:  # the signed assertion alone was taken: its own subject
        done = await approve_and_poll(m, page, started["state"])
        assert done["user"]["email"] == "pat@example.com"
    else:
        assert status == 400, page
    status, users = await m.call("GET", "/api/v1/users")
    assert "root@example.com" not in str(users)


async def test_a_bad_metadata_is_refused_and_unconfigured_is_a_400(m: Manager) -> None:
    bad = {"sp_entity_id": SP, "acs_url": acs_url(m), "idp_metadata": "<not-metadata/>" * 3}
    status, body = await m.call("PUT", "/api/v1/auth/saml", bad)
    assert status == 400, body
    assert (await m.call("DELETE", "/api/v1/auth/saml"))[0] == 200
    resp = await m.client.post(
        "/api/v1/auth/saml/start", json={"verifier_hash": verifier_hash(VERIFIER)}
    )
    assert resp.status == 400
    resp = await m.client.post(
        "/api/v1/auth/saml/acs", data={"SAMLResponse": "x", "RelayState": "nope"}
    )
    assert resp.status == 400


async def test_tether_saml_set_get_login_delete(m: Manager, idp: Idp, tmp_path: Path) -> None:
    import asyncio
    import io
    import json

    from manager.client.cli.main import run_cli

    base_env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(tmp_path / "cli"),
    }

    async def tether(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        env = {**base_env, "TETHER_API_KEY": m.key}
        code = await asyncio.to_thread(run_cli, list(argv), env=env, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    (tmp_path / "idp.xml").write_text(idp.metadata())
    settings = {"sp_entity_id": SP, "acs_url": acs_url(m), "idp_metadata": "-" * 20}
    (tmp_path / "saml.json").write_text(json.dumps(settings))
    code, out, err = await tether(
        "saml", "set", str(tmp_path / "saml.json"), "--idp-metadata", str(tmp_path / "idp.xml")
    )
    assert code == 0, err
    assert "characters of XML" in out
    code, out, err = await tether("saml", "get", "--output", "json")
    assert code == 0, err
    assert json.loads(out)["sp_entity_id"] == SP
    code, out, err = await tether("saml", "delete")
    assert code == 0, err
    assert (await m.call("GET", "/api/v1/auth/saml"))[0] == 404
