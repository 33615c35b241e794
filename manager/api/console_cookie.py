"""The web console's session cookie: it holds the same session token (``tss_``) that the API
takes as a bearer credential, and only console routes read it (manager.api.guards)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["COOKIE", "clear_cookie", "console_credential", "set_cookie"]

# __Host-: the browser keeps it only when Secure, with Path=/ and no Domain, so no other
# host or path can plant or shadow it.
COOKIE = "__Host-tether_session"


def console_credential(request: web.Request) -> str | None:
    value = request.cookies.get(COOKIE)
    return value or None


def set_cookie(response: web.StreamResponse, token: str, max_age: float) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(int(max_age), 1),
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
