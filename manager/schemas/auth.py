"""Models of the login routes (/api/v1/auth/...), shared by the server and the client."""

from __future__ import annotations

import base64
import hashlib
import re
import string
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from manager.schemas.grants import AccountPermission

__all__ = [
    "CHAR_CLASSES",
    "AuthSettings",
    "CharClass",
    "InviteAccept",
    "LoggedOut",
    "LoginRequest",
    "LoginResult",
    "Me",
    "PasswordChange",
    "SecondFactor",
    "SessionUser",
    "SsoLinkRequest",
    "SsoLinkStart",
    "SsoLinkView",
    "SsoPoll",
    "SsoSession",
    "SsoStart",
    "SsoStarted",
    "SsoUnlinked",
    "SsoUser",
    "TotpConfirm",
    "TotpConfirmed",
    "TotpEnrolStart",
    "TotpEnrolment",
    "client_code",
    "verifier_hash",
]


def _utf8(text: str) -> str:
    # JSON may carry lone surrogates (a \ud800 escape), which are no text; argon2 hashes
    # UTF-8, and the store keeps it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid text (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]
# Long enough for any passphrase, short enough that a body cannot make argon2 chew on
# megabytes (the policy says why a password is refused; this only bounds the request).
_PASSWORD = Field(min_length=1, max_length=1024)


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class LoginRequest(_Model):
    email: Text = Field(min_length=3, max_length=320)
    password: Text = _PASSWORD
    # With two-factor authentication on: the 6-digit code, or one of the recovery codes.
    totp_code: Text | None = Field(default=None, max_length=16)
    recovery_code: Text | None = Field(default=None, max_length=32)


class SessionUser(_Model):
    id: str
    email: str
    name: str


class LoginResult(_Model):
    token: str
    expires_at: float
    user: SessionUser
    # Set when this session may only finish logging in: "password_change" (the password
    # expired), "totp_enrolment" (the account enforces 2FA and the user has none) or "totp"
    # (an SSO login of a user with 2FA: POST /api/v1/auth/totp/verify with the code).
    restricted: Literal["password_change", "totp_enrolment", "totp"] | None = None


class InviteAccept(_Model):
    token: Text = Field(min_length=1, max_length=256)
    password: Text = _PASSWORD


class PasswordChange(_Model):
    current: Text = _PASSWORD
    new: Text = _PASSWORD


class TotpEnrolStart(_Model):
    # Your password again, so that a stolen session cannot add a device of its own; not
    # needed by a session whose one job is to enrol (2FA enforced at login).
    password: Text | None = Field(default=None, min_length=1, max_length=1024)


class TotpEnrolment(_Model):
    # Shown once: the text secret (to type in) and the otpauth:// URI (for a QR code).
    secret: str
    otpauth_uri: str


class TotpConfirm(_Model):
    code: Text = Field(min_length=6, max_length=16)


class TotpConfirmed(_Model):
    # Shown once: each logs in once in place of a code, for when the device is lost.
    recovery_codes: list[str]
    # A fresh session when the one used was restricted to enrolling; else None.
    session: LoginResult | None = None


class Me(_Model):
    kind: Literal["user", "api_key"]
    id: str
    name: str
    email: str | None = None
    groups: list[str] = Field(default_factory=list)
    account_permissions: list[AccountPermission] = Field(default_factory=list)
    totp_enabled: bool | None = None
    restricted: str | None = None
    session_expires_at: float | None = None


class LoggedOut(_Model):
    ended: bool


# -- SSO (manager.access.sso): start, then poll until the browser is done


def verifier_hash(verifier: str) -> str:
    """As PKCE's S256: base64url (no padding) of the verifier's SHA-256."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def client_code(hashed_verifier: str) -> str:
    """A short code both the CLI (from its verifier) and the browser page show, so the
    person approving can see it is their own terminal's login."""
    digest = hashlib.sha256(f"tether-sso-code:{hashed_verifier}".encode()).digest()
    text = base64.b32encode(digest).decode()[:8]
    return f"{text[:4]}-{text[4:]}"


class SsoStart(_Model):
    # base64url (no padding) of the SHA-256 of a random verifier the client keeps, as
    # PKCE's S256: only the holder of the verifier collects the session.
    verifier_hash: str = Field(pattern=r"^[A-Za-z0-9_-]{43}$")
    # What the client is (host, user agent), shown to the person approving in the browser.
    client_name: Text = Field(default="", max_length=120)


class SsoLinkStart(SsoStart):
    # A session asks to link an identity: the password again, as for a new 2FA device
    # (a stolen session must not plant a way in).
    password: Text = Field(min_length=1, max_length=1024)


class SsoStarted(_Model):
    # Open this in a browser; then poll with state and the verifier.
    authorize_url: str
    state: str
    expires_at: float
    # The short code the browser page shows for this client (manager.access.sso.client_code).
    code: str


class SsoPoll(_Model):
    state: Text = Field(min_length=1, max_length=256)
    verifier: Text = Field(min_length=43, max_length=128)


class SecondFactor(_Model):
    """The code of a session restricted to "totp": from the device, or a recovery code."""

    totp_code: Text | None = Field(default=None, max_length=16)
    recovery_code: Text | None = Field(default=None, max_length=32)


class SsoLinkRequest(_Model):
    # The user's subject (sub) at the provider; the configured issuer unless given: an
    # OIDC issuer, an LDAP directory's URL (the subject: the user name, in lower case) or a
    # SAML IdP's entity id (the subject: the NameID).
    subject: Text = Field(min_length=1, max_length=255)
    issuer: str | None = Field(
        default=None, min_length=8, max_length=512, pattern=r"^(https://|ldaps?://|urn:)\S+$"
    )


class SsoLinkView(_Model):
    issuer: str
    subject: str
    user_id: str
    made_by: str
    made_at: float


class SsoUnlinked(_Model):
    removed: list[SsoLinkView]


class SsoUser(_Model):
    id: str
    email: str
    name: str


class SsoSession(_Model):
    status: str  # "pending", "done", or "linked" (a link flow: no session)
    token: str | None = None
    expires_at: float | None = None
    user: SsoUser | None = None
    # "totp": the user has 2FA here and the provider asserted no MFA: the session may only
    # give the code (POST /api/v1/auth/totp/verify).
    restricted: Literal["totp"] | None = None


CharClass = Literal["lower", "upper", "digit", "symbol"]

CHAR_CLASSES: dict[CharClass, str] = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digit": string.digits,
    "symbol": string.punctuation,
}
_DOMAIN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"


def _default_classes() -> list[CharClass]:
    return ["lower", "upper", "digit"]


class AuthSettings(BaseModel):
    """The account's login rules. The defaults follow common guidance (NIST 800-63B length
    over rotation): no expiry unless asked for, lockout on, 2FA optional."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    password_min_length: int = Field(default=12, ge=8, le=128)
    password_classes: list[CharClass] = Field(default_factory=_default_classes)
    # 0: passwords never expire. Otherwise the first login after this many days may only
    # change the password.
    password_expiry_days: int = Field(default=0, ge=0, le=3650)
    # 0: never lock. Otherwise this many failed logins in a row lock the user for
    # lockout_minutes (a correct password in between starts the count again).
    lockout_attempts: int = Field(default=5, ge=0, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Users without 2FA must enrol at their next login before anything else.
    enforce_2fa: bool = False
    # New users' email domains (empty: any). Existing users are not touched.
    allowed_email_domains: list[str] = Field(default_factory=list, max_length=100)
    session_ttl_minutes: int = Field(default=8 * 60, ge=5, le=7 * 24 * 60)
    # Password logins and invite acceptances from one client address, per minute (a burst
    # of that many, refilled evenly): lockout guards one account, this guards many.
    login_attempts_per_ip_per_minute: int = Field(default=60, ge=1, le=100_000)

    @field_validator("password_classes")
    @classmethod
    def _distinct(cls, classes: list[CharClass]) -> list[CharClass]:
        return list(dict.fromkeys(classes))

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        out = []
        for d in domains:
            d = d.strip().lower().removeprefix("@")
            if not re.match(_DOMAIN, d) or len(d) > 253:
                raise ValueError(f"{d!r} is not a domain name")
            out.append(d)
        return list(dict.fromkeys(out))

    def domain_allowed(self, email: str) -> bool:
        if not self.allowed_email_domains:
            return True
        return email.rsplit("@", 1)[-1].lower() in self.allowed_email_domains
