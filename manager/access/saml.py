"""SAML 2.0 single sign-on, Tether as the service provider (pysaml2, which verifies XML
signatures with xmlsec1).

The login has the three steps of the OIDC one (manager.access.sso), and shares its pending
logins, its browser approval and its poll:

1. ``start``: the CLI sends the hash of a verifier it keeps; Tether records a pending login
   whose state is the RelayState and whose nonce is the AuthnRequest's ID, and answers the
   IdP's SSO URL (HTTP-Redirect binding) carrying the AuthnRequest;
2. ``acs``: the browser posts the IdP's Response (HTTP-POST binding). pysaml2 checks that the
   response or its assertion is signed by the IdP's certificate from its metadata, the
   audience (our entity id), the recipient and destination (our ACS URL), the
   NotBefore/NotOnOrAfter window, and that InResponseTo names the pending request (no
   unsolicited response). Tether then refuses a replayed assertion (its ID is remembered
   until it expires), and takes the identity (issuer: the IdP's entity id, subject: the
   NameID) the one path every external login takes (manager.access.external);
3. the person approves the client in the browser, and the CLI polls for its session
   (``/api/v1/auth/sso/poll``), whose second factor rule is
   manager.access.login.Logins.external_session's: local 2FA unless the IdP's
   AuthnContextClassRef is one of ``mfa_contexts``.

pysaml2 reads its own clock (the time checks cannot be given another one); the replay
memory uses the injected clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import structlog
from pydantic import BaseModel, ConfigDict

from manager.access.directory import Directory
from manager.access.entities import Entity, EntityKind
from manager.access.external import ExternalIdentity, ExternalUsers, SsoError
from manager.core.audit_chain import AuditOf
from manager.schemas.directory_auth import SamlSettings
from manager.store.base import Conflict

__all__ = ["Saml", "SamlAnswer", "SeenAssertion", "sp_metadata"]

log = structlog.get_logger("tether.saml")

XMLSEC = "/usr/bin/xmlsec1"
_SETTINGS_ID = "saml"
# An assertion without a NotOnOrAfter is remembered this long.
_REMEMBER_S = 3600.0
# The clock skew pysaml2 tolerates between the IdP and us, in seconds.
_SKEW_S = 60


class SeenAssertion(BaseModel):
    """An assertion ID already used, until it would have expired (replay)."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    assertion_id: str
    issuer: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class SamlAnswer:
    """A verified Response: the identity, and the AuthnRequest ID it answers."""

    identity: ExternalIdentity
    in_response_to: str


def _config(settings: SamlSettings) -> Any:
    from saml2 import BINDING_HTTP_POST
    from saml2.config import SPConfig

    conf = SPConfig()
    conf.load(
        {
            "entityid": settings.sp_entity_id,
            "xmlsec_binary": XMLSEC,
            "metadata": {"inline": [settings.idp_metadata]},
            "accepted_time_diff": _SKEW_S,
            "allow_unknown_attributes": True,
            "service": {
                "sp": {
                    "endpoints": {
                        "assertion_consumer_service": [(settings.acs_url, BINDING_HTTP_POST)]
                    },
                    "allow_unsolicited": False,
                    "authn_requests_signed": False,
                    "want_response_signed": False,
                    "want_assertions_signed": False,
                    # One of the two at least: never an unsigned response and assertion.
                    "want_assertions_or_response_signed": True,
                }
            },
        }
    )
    return conf


def _client(settings: SamlSettings) -> Any:
    from saml2.client import Saml2Client

    try:
        return Saml2Client(config=_config(settings))
    except Exception as exc:  # pysaml2 raises many kinds on a metadata it cannot read
        raise SsoError(f"idp_metadata: it cannot be used ({type(exc).__name__})") from None


def _idp_entity(client: Any) -> str:
    idps = list(client.metadata.identity_providers())
    if len(idps) != 1:
        raise SsoError("idp_metadata: it must describe exactly one identity provider")
    return str(idps[0])


def sp_metadata(settings: SamlSettings) -> str:
    """Tether's SP metadata, for the IdP."""
    from saml2.metadata import create_metadata_string

    out = create_metadata_string(None, config=_config(settings), valid=24 * 4)
    return out.decode() if isinstance(out, bytes) else str(out)


def check_settings(settings: SamlSettings) -> str:
    """The IdP's entity id, or SsoError (400) naming what is wrong with the settings."""
    return _idp_entity(_client(settings))


def _first(values: Any) -> str:
    if isinstance(values, list) and values:
        return str(values[0])
    return ""


class Saml:
    def __init__(
        self,
        directory: Directory,
        *,
        domain_allowed: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        store = directory.store
        self._clock = clock
        self.settings = EntityKind(
            store, "saml_settings", SamlSettings, lambda _b: _SETTINGS_ID, "sml"
        )
        self.seen = EntityKind(
            store, "saml_assertion", SeenAssertion, lambda b: f"{b.issuer} {b.assertion_id}", "sma"
        )
        self.users = ExternalUsers(store, directory, domain_allowed=domain_allowed, clock=clock)

    async def current(self) -> SamlSettings | None:
        found = await self.settings.get(_SETTINGS_ID)
        return None if found is None else found.body

    async def configured(self) -> SamlSettings:
        found = await self.current()
        if found is None or not found.enabled:
            raise SsoError("SAML sign-in is not configured")
        return found

    async def save_settings(
        self,
        body: SamlSettings,
        *,
        audit: AuditOf[tuple[SamlSettings | None, Entity[SamlSettings]]] | None = None,
    ) -> SamlSettings | None:
        await asyncio.to_thread(check_settings, body)
        return await self.settings.put(_SETTINGS_ID, body, audit=audit)

    async def delete_settings(self, *, audit: AuditOf[Entity[SamlSettings]] | None = None) -> bool:
        return await self.settings.delete(_SETTINGS_ID, audit=audit)

    async def authn_request(self, settings: SamlSettings, relay_state: str) -> tuple[str, str]:
        """(the AuthnRequest's ID, the IdP URL that carries it) for a pending login."""

        def make() -> tuple[str, str]:
            from saml2 import BINDING_HTTP_REDIRECT

            client = _client(settings)
            reqid, info = client.prepare_for_authenticate(
                entityid=_idp_entity(client),
                relay_state=relay_state,
                binding=BINDING_HTTP_REDIRECT,
            )
            return str(reqid), str(dict(info["headers"])["Location"])

        return await asyncio.to_thread(make)

    async def verify(
        self, settings: SamlSettings, saml_response: str, expected_request: str
    ) -> SamlAnswer:
        """The identity a posted Response proves, checked as the module says; SsoError
        (400) naming why not. The assertion's ID is remembered: a replay is refused."""
        answer, assertion_id, expires = await asyncio.to_thread(
            _verify, settings, saml_response, expected_request
        )
        seen = SeenAssertion(
            assertion_id=assertion_id,
            issuer=answer.identity.issuer,
            expires_at=expires or self._clock() + _REMEMBER_S,
        )
        for old in await self.seen.list():
            if old.body.expires_at <= self._clock():
                await self.seen.delete(old.id)  # expired: a replay would fail its time check
        try:
            await self.seen.insert(seen)
        except Conflict:
            raise SsoError("this assertion was used already (a replay)") from None
        return answer


def _verify(
    settings: SamlSettings, saml_response: str, expected_request: str
) -> tuple[SamlAnswer, str, float | None]:
    from saml2 import BINDING_HTTP_POST

    client = _client(settings)
    try:
        resp = client.parse_authn_request_response(
            saml_response, BINDING_HTTP_POST, outstanding={expected_request: settings.acs_url}
        )
    except Exception as exc:  # pysaml2's refusals are many classes; none is a crash here
        why = type(exc).__name__
        log.info("SAML response refused", reason=why, detail=str(exc)[:300])
        raise SsoError(f"the SAML response was refused ({why})") from None
    if resp is None or resp.assertion is None:
        raise SsoError("the SAML response holds no assertion")
    if resp.in_response_to != expected_request:
        raise SsoError("the SAML response answers another request")
    _check_destination(resp, settings)
    subject = resp.name_id.text if resp.name_id is not None else None
    if not subject:
        raise SsoError("the SAML assertion names no subject (NameID)")
    attributes = resp.get_identity() or {}
    email = _first(attributes.get(settings.email_attribute)) or (subject if "@" in subject else "")
    if "@" not in email:
        raise SsoError(f"the SAML assertion carries no email ({settings.email_attribute})")
    groups = attributes.get(settings.group_attribute) or []
    contexts = {str(ref) for ref, *_ in resp.authn_info() or []}
    identity = ExternalIdentity(
        issuer=str(resp.issuer()),
        subject=str(subject),
        email=email.strip().lower(),
        name=_first(attributes.get(settings.name_attribute)),
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        mfa=bool(contexts & set(settings.mfa_contexts)),
    )
    expires = getattr(resp, "not_on_or_after", 0) or None
    return SamlAnswer(identity, expected_request), str(resp.assertion.id), expires


def _check_destination(resp: Any, settings: SamlSettings) -> None:
    """The Response's Destination, when given, is our ACS (pysaml2 checks the assertion's
    Recipient; this covers a response sent to another SP and posted here)."""
    destination = getattr(resp.response, "destination", None)
    if destination and urlparse(destination) != urlparse(settings.acs_url):
        raise SsoError("the SAML response is for another destination")
