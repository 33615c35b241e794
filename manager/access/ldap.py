"""Signing in against an LDAP directory (ldap3): search-then-bind with a service account, or
a direct bind through a DN template; always over TLS (LDAPS or StartTLS), the server's
certificate checked against the configured CA.

A successful bind proves an :class:`ExternalIdentity` (issuer: the directory's URL, subject:
the user name as typed, in lower case), which then takes the one path every external login
takes (manager.access.external, manager.access.login.Logins.external_session): found by its
link, never by email alone; groups mapped; local 2FA kept (a directory asserts no MFA).

What the user types goes into a filter only through ``escape_filter_chars`` and into a DN
only through ``escape_rdn``: ``*``, ``)(uid=*`` or a NUL match nobody, they never widen a
search. An empty password is refused before the directory is asked, since LDAP takes an
empty password as an anonymous bind that "succeeds" (RFC 4513 5.1.2).

"Disabled" has no standard in LDAP: the settings name it, as membership of a group
(``disabled_group``) and/or a filter the user's entry matches (``disabled_filter``, e.g.
``(pwdAccountLockedTime=*)`` with the ppolicy overlay, or ``(employeeType=former)``).

ldap3's synchronous strategy runs in a thread: a slow directory holds a thread, never the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from manager.access.directory import Directory
from manager.access.entities import Entity, EntityKind
from manager.access.external import ExternalIdentity, ExternalUsers, SsoError
from manager.core.audit_chain import AuditOf
from manager.schemas.directory_auth import LdapSettings

if TYPE_CHECKING:
    # ldap3 (about 5 MiB) is imported when a sign-in first asks the directory, not by every
    # manager: most have no LDAP.
    import ldap3

__all__ = ["Ldap", "LdapRefused", "LdapSettings", "normal_username"]

_TIMEOUT_S = 10
_SETTINGS_ID = "ldap"
MAX_USERNAME = 256


class LdapRefused(Exception):
    """The directory refused the credentials (or knows no such user): counted towards the
    lockout, and answered as a wrong password, whichever it was."""


def normal_username(username: str) -> str:
    """The user name as it is linked (the identity's subject); Invalid-worthy ValueError for
    one no directory holds (empty, too long, a control character such as NUL)."""
    name = username.strip()
    if not name or len(name) > MAX_USERNAME:
        raise ValueError(f"the user name is empty or longer than {MAX_USERNAME} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("the user name holds a control character")
    return name.lower()


@dataclass(frozen=True, slots=True)
class _Found:
    dn: str
    email: str
    name: str
    groups: tuple[str, ...]
    disabled: bool


class Ldap:
    def __init__(
        self,
        directory: Directory,
        secret: Callable[[str], Awaitable[bytes]],
        *,
        domain_allowed: Callable[[str], Awaitable[bool]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        store = directory.store
        self._secret = secret  # async (builtin secret name) -> its value
        self.settings = EntityKind(
            store, "ldap_settings", LdapSettings, lambda _b: _SETTINGS_ID, "ldp"
        )
        self.users = ExternalUsers(store, directory, domain_allowed=domain_allowed, clock=clock)

    async def configured(self) -> LdapSettings:
        found = await self.settings.get(_SETTINGS_ID)
        if found is None or not found.body.enabled:
            raise SsoError("LDAP sign-in is not configured")
        return found.body

    async def current(self) -> LdapSettings | None:
        found = await self.settings.get(_SETTINGS_ID)
        return None if found is None else found.body

    async def save_settings(
        self,
        body: LdapSettings,
        *,
        audit: AuditOf[tuple[LdapSettings | None, Entity[LdapSettings]]] | None = None,
    ) -> LdapSettings | None:
        return await self.settings.put(_SETTINGS_ID, body, audit=audit)

    async def delete_settings(self, *, audit: AuditOf[Entity[LdapSettings]] | None = None) -> bool:
        return await self.settings.delete(_SETTINGS_ID, audit=audit)

    async def authenticate(
        self, settings: LdapSettings, username: str, password: str
    ) -> ExternalIdentity:
        """The identity the directory vouches for with these credentials. LdapRefused for a
        wrong password or an unknown user; SsoError (403) for a disabled one, (502) when
        the directory cannot be reached or searched."""
        subject = normal_username(username)
        if not password:
            raise LdapRefused
        service = None
        if settings.bind_password_secret is not None:
            try:
                service = (await self._secret(settings.bind_password_secret)).decode()
            except ValueError as exc:
                raise SsoError(f"the LDAP service account's password: {exc}", 502) from None
        found = await asyncio.to_thread(
            _bind_and_read, settings, username.strip(), password, service
        )
        if found.disabled or (
            settings.disabled_group is not None and settings.disabled_group in found.groups
        ):
            raise SsoError("this user is disabled in the directory", 403)
        if "@" not in found.email:
            raise SsoError(
                f"the directory holds no email address ({settings.email_attribute}) for this user"
            )
        return ExternalIdentity(
            issuer=settings.url.rstrip("/"),
            subject=subject,
            email=found.email.lower(),
            name=found.name,
            groups=found.groups,
        )


def _tls(settings: LdapSettings) -> ldap3.Tls:
    import ldap3

    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        ca_certs_file=settings.ca_file,
    )


def _connection(settings: LdapSettings, user: str | None, password: str | None) -> ldap3.Connection:
    import ldap3

    server = ldap3.Server(
        settings.url,
        use_ssl=settings.url.startswith("ldaps://"),
        tls=_tls(settings),
        connect_timeout=_TIMEOUT_S,
        get_info=ldap3.NONE,
    )
    return ldap3.Connection(
        server,
        user=user,
        password=password,
        receive_timeout=_TIMEOUT_S,
        raise_exceptions=False,
        read_only=True,
    )


def _open(conn: ldap3.Connection, settings: LdapSettings) -> None:
    """Connect, and StartTLS when asked, before any credential is sent."""
    conn.open()
    if settings.start_tls and not (conn.start_tls() and conn.tls_started):
        raise SsoError("the LDAP server refused StartTLS", 502)


def _bind_and_read(
    settings: LdapSettings, username: str, password: str, service: str | None
) -> _Found:
    from ldap3.core.exceptions import LDAPException

    try:
        return _bind_and_read_unsafe(settings, username, password, service)
    except LDAPException as exc:
        # The class name only: its text may quote the server's answer, never a secret here,
        # but nothing the user needs either.
        raise SsoError(
            "the LDAP server could not be used (its address, or TLS: is its certificate"
            f" issued by the CA in ca_file?): {type(exc).__name__}",
            502,
        ) from None
    except ssl.SSLError as exc:
        raise SsoError(f"the LDAP server's TLS was refused: {exc.reason}", 502) from None
    except OSError as exc:
        raise SsoError(f"the LDAP server could not be reached: {type(exc).__name__}", 502) from None


def _attributes(settings: LdapSettings) -> list[str]:
    wanted = [settings.email_attribute, settings.name_attribute]
    if settings.group_attribute is not None:
        wanted.append(settings.group_attribute)
    return wanted


def _bind_and_read_unsafe(
    settings: LdapSettings, username: str, password: str, service: str | None
) -> _Found:
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn

    with contextlib.ExitStack() as opened:

        def connect(who: str | None, secret: str | None) -> ldap3.Connection:
            conn = _connection(settings, who, secret)
            opened.callback(conn.unbind)  # every connection is closed, whatever happens
            _open(conn, settings)
            return conn

        if settings.dn_template is not None:
            dn = settings.dn_template.replace("{username}", escape_rdn(username))
            reader = connect(dn, password)
            if not reader.bind():
                raise LdapRefused
            return _read(reader, settings, dn, username)
        reader = connect(settings.bind_dn, service)
        if not reader.bind():
            raise SsoError("the LDAP service account could not bind (bind_dn, its password)", 502)
        query = settings.user_filter.replace("{username}", escape_filter_chars(username))
        reader.search(settings.user_base, query, attributes=_attributes(settings), size_limit=2)
        if len(reader.entries) != 1:  # none, or a filter that matches several: nobody
            raise LdapRefused
        dn = reader.entries[0].entry_dn
        if not connect(dn, password).bind():
            raise LdapRefused
        return _read(reader, settings, dn, username)


def _values(entry: Any, attribute: str) -> list[str]:
    if attribute not in entry:
        return []
    return [str(v) for v in entry[attribute].values]


def _read(conn: ldap3.Connection, settings: LdapSettings, dn: str, username: str) -> _Found:
    """The bound user's entry: email, name, groups, and whether the settings call it
    disabled."""
    import ldap3
    from ldap3.utils.conv import escape_filter_chars

    conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=_attributes(settings))
    if len(conn.entries) != 1:
        raise SsoError("the directory entry of this user cannot be read", 502)
    entry = conn.entries[0]
    emails = _values(entry, settings.email_attribute)
    names = _values(entry, settings.name_attribute)
    groups: list[str] = []
    if settings.group_attribute is not None:
        groups = [_first_rdn_value(g) for g in _values(entry, settings.group_attribute)]
    elif settings.group_base is not None:
        query = settings.group_filter.replace("{dn}", escape_filter_chars(dn)).replace(
            "{username}", escape_filter_chars(username)
        )
        conn.search(settings.group_base, query, attributes=[settings.group_name_attribute])
        for group in conn.entries:
            groups += _values(group, settings.group_name_attribute)
    disabled = False
    if settings.disabled_filter is not None:
        conn.search(dn, settings.disabled_filter, search_scope=ldap3.BASE, attributes=[])
        disabled = len(conn.entries) > 0
    return _Found(
        dn,
        emails[0] if emails else "",
        names[0] if names else "",
        tuple(sorted(set(groups))),
        disabled,
    )


def _first_rdn_value(dn: str) -> str:
    """``cn=ops,ou=groups,...`` -> ``ops``: a memberOf value as its group's name."""
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.dn import parse_dn

    try:
        return str(parse_dn(dn)[0][1])
    except (LDAPException, IndexError):
        return dn
