"""Wire models of directory sign-in: LDAP settings and login (manager.access.ldap), SAML
settings (manager.access.saml) and SCIM tokens (manager.access.scim)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "LdapLogin",
    "LdapSettings",
    "SamlSettings",
    "ScimTokenCreate",
    "ScimTokenCreated",
    "ScimTokenList",
    "ScimTokenRevoked",
    "ScimTokenView",
    "SettingsDeleted",
]


class LdapSettings(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    enabled: bool = True
    # ldaps://host:636, or ldap://host:389 with start_tls: never in clear.
    url: str = Field(min_length=8, max_length=512, pattern=r"^ldaps?://[^\s/]+/?$")
    start_tls: bool = False
    # A CA bundle on the manager host to check the directory's certificate against (else
    # the system's).
    ca_file: str | None = Field(default=None, max_length=1024)
    # Search, then bind: the service account (its password: the name of a builtin secret).
    bind_dn: str | None = Field(default=None, max_length=1024)
    bind_password_secret: str | None = Field(default=None, max_length=256)
    user_base: str | None = Field(default=None, max_length=1024)
    user_filter: str = Field(default="(uid={username})", max_length=1024)
    # Or bind directly as this DN ({username} escaped as an RDN value).
    dn_template: str | None = Field(default=None, max_length=1024)
    email_attribute: str = Field(default="mail", min_length=1, max_length=128)
    name_attribute: str = Field(default="cn", min_length=1, max_length=128)
    # Groups: an attribute of the user listing group DNs (memberOf), or a search.
    group_attribute: str | None = Field(default=None, max_length=128)
    group_base: str | None = Field(default=None, max_length=1024)
    group_filter: str = Field(default="(&(objectClass=groupOfNames)(member={dn}))", max_length=1024)
    group_name_attribute: str = Field(default="cn", min_length=1, max_length=128)
    # Directory group (its name, as mapped) -> Tether group name.
    group_mapping: dict[str, str] = Field(default_factory=dict, max_length=256)
    # A member of this directory group, or an entry matching this filter, is disabled.
    disabled_group: str | None = Field(default=None, max_length=256)
    disabled_filter: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _coherent(self) -> LdapSettings:
        if self.url.startswith("ldap://") and not self.start_tls:
            raise ValueError("url: ldap:// needs start_tls (credentials never go in clear)")
        if self.url.startswith("ldaps://") and self.start_tls:
            raise ValueError("start_tls: not with ldaps:// (it is TLS already)")
        if (self.dn_template is None) == (self.user_base is None):
            raise ValueError("give one of dn_template (direct bind) or user_base (search)")
        if self.dn_template is not None and "{username}" not in self.dn_template:
            raise ValueError("dn_template: it needs {username}")
        if self.user_base is not None and "{username}" not in self.user_filter:
            raise ValueError("user_filter: it needs {username}")
        if (self.bind_dn is None) != (self.bind_password_secret is None):
            raise ValueError("bind_dn and bind_password_secret go together")
        if self.user_base is not None and self.bind_dn is None:
            raise ValueError("user_base: a search needs the service account (bind_dn)")
        if self.group_attribute is not None and self.group_base is not None:
            raise ValueError("give group_attribute or group_base, not both")
        for name in ("user_filter", "group_filter", "disabled_filter"):
            text = getattr(self, name)
            if text is not None and not (text.startswith("(") and text.endswith(")")):
                raise ValueError(f"{name}: an LDAP filter is in parentheses")
        return self


class LdapLogin(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class SettingsDeleted(BaseModel):
    model_config = ConfigDict(defer_build=True)
    deleted: bool


class ScimTokenCreate(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # The provider its users sign in through: an OIDC issuer, a SAML IdP entity id, an
    # LDAP URL; their link is (issuer, userName).
    issuer: str | None = Field(
        default=None, min_length=8, max_length=512, pattern=r"^(https://|ldaps?://|urn:)\S+$"
    )


class ScimTokenView(BaseModel):
    model_config = ConfigDict(defer_build=True)
    name: str
    issuer: str | None
    created_at: float
    created_by: str


class ScimTokenCreated(ScimTokenView):
    # Shown once: only its hash is kept.
    token: str


class ScimTokenList(BaseModel):
    model_config = ConfigDict(defer_build=True)
    tokens: list[ScimTokenView]


class ScimTokenRevoked(BaseModel):
    model_config = ConfigDict(defer_build=True)
    revoked: bool


class SamlSettings(BaseModel):
    """SAML 2.0 sign-in (manager.access.saml): Tether is the service provider (SP)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    enabled: bool = True
    # Tether's entity id at the IdP, and its assertion consumer service URL as the
    # browser reaches it (…/api/v1/auth/saml/acs): both registered with the IdP.
    sp_entity_id: str = Field(min_length=1, max_length=512, pattern=r"^\S+$")
    acs_url: str = Field(min_length=8, max_length=512, pattern=r"^https?://\S+$")
    # The IdP's metadata document (XML): its entity id, SSO URL and signing certificate.
    idp_metadata: str = Field(min_length=20, max_length=256 * 1024)
    # Attributes of the assertion: the email (else the NameID when it is an address),
    # the display name, the groups.
    email_attribute: str = Field(default="email", min_length=1, max_length=256)
    name_attribute: str = Field(default="displayName", min_length=1, max_length=256)
    group_attribute: str = Field(default="groups", min_length=1, max_length=256)
    group_mapping: dict[str, str] = Field(default_factory=dict, max_length=256)
    # AuthnContextClassRef values that mean the IdP did MFA: a linked user's local 2FA is
    # then not asked again.
    mfa_contexts: list[str] = Field(
        default_factory=lambda: [
            "http://schemas.microsoft.com/claims/multipleauthn",
            "https://refeds.org/profile/mfa",
        ],
        max_length=32,
    )
