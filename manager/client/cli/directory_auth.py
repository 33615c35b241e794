"""The ``tether ldap``, ``tether saml`` and ``tether scim`` commands: directory sign-in.

    tether ldap set ldap.json              # the settings, as the API takes them (JSON)
    tether ldap get
    tether ldap delete
    tether ldap login pat                  # asks the directory password; keeps the session
    tether saml set saml.json              # the IdP's metadata XML inside, as a JSON string
    tether saml login                      # in a browser, as tether login --sso
    tether scim token create okta --issuer https://idp.example.com   # printed once
    tether scim token list
    tether scim token revoke okta

Settings files are JSON documents of the API's bodies (see docs/access.md); the settings
name secrets (the service account's password), never hold them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.config_file import private_dir
from manager.client.cli.context import Context, UsageError
from manager.client.cli.login import _ask, _password, _sso, _stored
from manager.client.cli.parity import covers
from manager.schemas.auth import LoginResult, SecondFactor
from manager.schemas.directory_auth import (
    LdapLogin,
    LdapSettings,
    SamlSettings,
    ScimTokenCreate,
)

__all__ = ["add_directory_auth_commands", "read_settings"]


def read_settings(path: str, model: type[Any]) -> Any:
    """A settings file (JSON) as ``model``; UsageError naming the file and the field."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or type(exc).__name__}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(document)"
        raise UsageError(f"{path}: {loc}: {err['msg']}") from None


def _show(ctx: Context, model: BaseModel) -> int:
    if ctx.json:
        ctx.console.print(fmt.to_json(model))
    else:
        rows = [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in model]
        ctx.console.print(fmt.table(("setting", "value"), rows))
    return 0


async def cmd_ldap_set(ctx: Context, args: argparse.Namespace) -> int:
    return _show(ctx, await ctx.client.set_ldap_settings(read_settings(args.file, LdapSettings)))


async def cmd_ldap_get(ctx: Context, args: argparse.Namespace) -> int:
    return _show(ctx, await ctx.client.ldap_settings())


def _done(ctx: Context, answer: BaseModel, note: str) -> int:
    if ctx.json:
        ctx.console.print(fmt.to_json(answer))
    else:
        ctx.console.note(note)
    return 0


async def cmd_ldap_delete(ctx: Context, args: argparse.Namespace) -> int:
    return _done(ctx, await ctx.client.delete_ldap_settings(), "LDAP sign-in is off.")


async def _second_factor(ctx: Context, args: argparse.Namespace, result: LoginResult) -> Any:
    """A user with 2FA here gives their code after the directory's password."""
    if result.restricted != "totp":
        return result
    ctx.client.use_credential(result.token)
    code = (args.totp_code or _ask(ctx, "Authentication code (or a recovery code): ")).strip()
    recovery = "-" in code or len(code) > 8
    return await ctx.client.totp_verify(
        SecondFactor(totp_code=None if recovery else code, recovery_code=code if recovery else None)
    )


async def cmd_ldap_login(ctx: Context, args: argparse.Namespace) -> int:
    private_dir(ctx.config_dir)
    username = args.username or _ask(ctx, "Directory user name: ")
    body = LdapLogin(username=username.strip(), password=_password(ctx, args))
    result = await ctx.client.ldap_login(body)
    return _stored(ctx, await _second_factor(ctx, args, result))


async def cmd_saml_set(ctx: Context, args: argparse.Namespace) -> int:
    body = read_settings(args.file, SamlSettings)
    if args.idp_metadata:
        body = body.model_copy(update={"idp_metadata": _read_text(args.idp_metadata)})
    return _show(ctx, _short(await ctx.client.set_saml_settings(body)))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or type(exc).__name__}") from None


def _short(s: SamlSettings) -> SamlSettings:
    """The metadata XML is long: the table shows its size."""
    return s.model_copy(update={"idp_metadata": f"({len(s.idp_metadata)} characters of XML)"})


async def cmd_saml_get(ctx: Context, args: argparse.Namespace) -> int:
    found = await ctx.client.saml_settings()
    return _show(ctx, found if ctx.json else _short(found))


async def cmd_saml_delete(ctx: Context, args: argparse.Namespace) -> int:
    return _done(ctx, await ctx.client.delete_saml_settings(), "SAML sign-in is off.")


async def cmd_saml_login(ctx: Context, args: argparse.Namespace) -> int:
    private_dir(ctx.config_dir)
    return _stored(ctx, await _sso(ctx, args, start=ctx.client.saml_start))


async def cmd_scim_token_create(ctx: Context, args: argparse.Namespace) -> int:
    made = await ctx.client.create_scim_token(ScimTokenCreate(name=args.name, issuer=args.issuer))
    if ctx.json:
        ctx.console.print(fmt.to_json(made))
        return 0
    ctx.console.note(
        f"SCIM token {made.name} made; give it to the identity provider's provisioning as its"
        " bearer token (base URL: <manager>/scim/v2). It is shown once:"
    )
    ctx.console.print(made.token)
    return 0


async def cmd_scim_token_list(ctx: Context, args: argparse.Namespace) -> int:
    found = await ctx.client.list_scim_tokens()
    if ctx.json:
        ctx.console.print(fmt.to_json(found))
    elif found.tokens:
        rows = [
            [t.name, t.issuer or "-", fmt.timestamp(t.created_at), t.created_by]
            for t in found.tokens
        ]
        ctx.console.print(fmt.table(("name", "issuer", "created", "by"), rows))
    else:
        ctx.console.note("No SCIM tokens.")
    return 0


async def cmd_scim_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    done = await ctx.client.revoke_scim_token(args.name)
    return _done(ctx, done, f"SCIM token {args.name} revoked.")


def add_directory_auth_commands(groups: Any, output: argparse.ArgumentParser) -> None:
    ldap = groups.add_parser("ldap", help="LDAP sign-in: settings, and logging in").add_subparsers(
        dest="ldap_command", required=True, metavar="COMMAND"
    )
    p = ldap.add_parser("set", parents=[output], help="set the LDAP settings from a JSON file")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(handler=cmd_ldap_set)
    covers(p, "PUT /api/v1/auth/ldap")
    p = ldap.add_parser("get", parents=[output], help="show the LDAP settings")
    p.set_defaults(handler=cmd_ldap_get)
    covers(p, "GET /api/v1/auth/ldap")
    p = ldap.add_parser("delete", parents=[output], help="turn LDAP sign-in off")
    p.set_defaults(handler=cmd_ldap_delete)
    covers(p, "DELETE /api/v1/auth/ldap")
    p = ldap.add_parser("login", parents=[output], help="log in with a directory account")
    p.add_argument("username", nargs="?", metavar="USERNAME")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--totp-code", metavar="CODE", help="the 2FA code, when you have 2FA here")
    p.set_defaults(handler=cmd_ldap_login, anonymous=True)
    covers(p, "POST /api/v1/auth/ldap/login")
    saml = groups.add_parser("saml", help="SAML sign-in: settings, and logging in").add_subparsers(
        dest="saml_command", required=True, metavar="COMMAND"
    )
    p = saml.add_parser("set", parents=[output], help="set the SAML settings from a JSON file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--idp-metadata", metavar="XML", help="take idp_metadata from this XML file")
    p.set_defaults(handler=cmd_saml_set)
    covers(p, "PUT /api/v1/auth/saml")
    p = saml.add_parser("get", parents=[output], help="show the SAML settings")
    p.set_defaults(handler=cmd_saml_get)
    covers(p, "GET /api/v1/auth/saml")
    p = saml.add_parser("delete", parents=[output], help="turn SAML sign-in off")
    p.set_defaults(handler=cmd_saml_delete)
    covers(p, "DELETE /api/v1/auth/saml")
    p = saml.add_parser("login", parents=[output], help="log in through the SAML IdP (browser)")
    p.add_argument("--totp-code", metavar="CODE", help="the 2FA code, when you have 2FA here")
    p.set_defaults(handler=cmd_saml_login, anonymous=True)
    covers(p, "POST /api/v1/auth/saml/start", "POST /api/v1/auth/sso/poll")
    scim = groups.add_parser("scim", help="SCIM provisioning tokens").add_subparsers(
        dest="scim_command", required=True, metavar="COMMAND"
    )
    token = scim.add_parser("token", help="SCIM tokens").add_subparsers(
        dest="scim_token_command", required=True, metavar="COMMAND"
    )
    p = token.add_parser("create", parents=[output], help="make a SCIM token (shown once)")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--issuer", metavar="URL", help="link the users it makes to this provider (userName)"
    )
    p.set_defaults(handler=cmd_scim_token_create)
    covers(p, "POST /api/v1/scim/tokens")
    p = token.add_parser("list", parents=[output], help="list SCIM tokens")
    p.set_defaults(handler=cmd_scim_token_list)
    covers(p, "GET /api/v1/scim/tokens")
    p = token.add_parser("revoke", parents=[output], help="revoke a SCIM token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_scim_token_revoke)
    covers(p, "DELETE /api/v1/scim/tokens/{name}")
