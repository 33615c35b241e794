"""A small OpenID Connect provider for the SSO tests: discovery, an authorize endpoint that
signs the configured person in at once, a token endpoint that checks the client and the code,
and a JWKS, over real TLS on loopback. ID tokens are RS256, signed with joserfc."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import RSAKey

from shared.tls import ensure_manager_certificates, server_context


@dataclass
class Person:
    email: str
    name: str = "Pat Example"
    groups: list[str] = field(default_factory=list)
    # The subject (sub); the email when not given.
    subject: str | None = None
    email_verified: bool | None = True
    # Claims the provider adds as they are (amr, acr).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provider:
    issuer: str
    ca_file: Path
    client_id: str
    client_secret: str
    # Who the next authorize call signs in.
    person: Person = field(default_factory=lambda: Person("pat@example.com"))
    # Tests turn these to make the provider misbehave.
    audience: str | None = None
    signing_key: Any = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_calls: int = 0


@asynccontextmanager
async def oidc_provider(
    tmp: Path, client_id: str = "tether", client_secret: str = "client-s3cret-value"
) -> AsyncIterator[Provider]:
    paths = ensure_manager_certificates(tmp / "idp-tls", ["127.0.0.1"])
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    provider = Provider("", paths.ca_cert, client_id, client_secret, signing_key=key)
    public_jwks = {"keys": [key.as_dict(private=False)]}

    async def discovery(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": provider.issuer,
                "authorization_endpoint": f"{provider.issuer}/authorize",
                "token_endpoint": f"{provider.issuer}/token",
                "jwks_uri": f"{provider.issuer}/jwks",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def authorize(request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") != provider.client_id or q.get("response_type") != "code":
            return web.Response(status=400, text="bad client or response type")
        code = secrets.token_urlsafe(16)
        provider.codes[code] = {
            "nonce": q.get("nonce"),
            "redirect_uri": q.get("redirect_uri"),
            "person": provider.person,
        }
        target = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q.get('state', '')})}"
        raise web.HTTPFound(target)

    async def token(request: web.Request) -> web.Response:
        provider.token_calls += 1
        form = await request.post()
        if (form.get("client_id"), form.get("client_secret")) != (
            provider.client_id,
            provider.client_secret,
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = provider.codes.pop(str(form.get("code")), None)  # a code works once
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        person: Person = grant["person"]
        now = int(time.time())
        claims = {
            "iss": provider.issuer,
            "sub": person.subject or person.email.lower(),
            "aud": provider.audience or provider.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "email": person.email,
            "name": person.name,
            "groups": person.groups,
            **person.extra,
        }
        if person.email_verified is not None:
            claims["email_verified"] = person.email_verified
        header = {"alg": "RS256", "kid": "k1"}
        id_token = jwt.encode(header, claims, provider.signing_key)
        return web.json_response(
            {"access_token": "at", "token_type": "Bearer", "id_token": id_token}
        )

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response(public_jwks)

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/authorize", authorize)
    app.router.add_post("/token", token)
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=server_context(paths.server_cert, paths.server_key)
    )
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider.issuer = f"https://127.0.0.1:{port}"
    try:
        yield provider
    finally:
        await runner.cleanup()
