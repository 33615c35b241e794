"""What guards every console page besides the API's own guards: the response headers, the
same-origin and CSRF checks of every state change, and refusals shown as pages.

The CSRF token is a synchronizer token bound to the session: the SHA-256 of the session
token under a label of its own, so it is unforgeable without the session token (which an
attacker's page cannot read: the cookie is HttpOnly and SameSite=Strict) and tells nothing
of it. It is checked on every POST to a console route that acts for a session, and every
console POST (the login too) must come from this origin (Origin, or Sec-Fetch-Site).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from manager.api.console_cookie import clear_cookie, console_credential
from manager.api.http import ApiProblem, Handler, RouteTable, status_of
from manager.console.render import render
from manager.errors import DomainError

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "add_headers",
    "console_middleware",
    "csrf_token",
    "refused",
    "where_to",
]

CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none';"
        " object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

# Where a restricted session is sent: the one thing it may do.
_RESTRICTED_PAGE = {
    "totp_enrolment_required": "/console/account",
    "totp_required": "/console/account",
    "password_change_required": "/console/account",
}


def csrf_token(session_token: str) -> str:
    digest = hashlib.sha256(b"tether-console-csrf:" + session_token.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def is_console_path(path: str) -> bool:
    return path == "/" or path == "/console" or path.startswith("/console/")


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every console answer (pages, fragments, assets, refusals and
    404s under /console) carries the headers; pages are never cached."""
    if not is_console_path(request.path):
        return
    for name, value in HEADERS.items():
        response.headers[name] = value
    if not request.path.startswith("/console/static/"):
        response.headers["Cache-Control"] = "no-store"


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin == f"{request.scheme}://{request.host}"


def _check_origin(request: web.Request) -> None:
    if not _same_origin(request):
        raise ApiProblem(403, "cross_site", "refused: the request came from another site")


async def _check_csrf(request: web.Request) -> None:
    session = console_credential(request)
    if session is None:
        return  # the guards refuse it as not signed in
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if given is None or not hmac.compare_digest(given.encode(), csrf_token(session).encode()):
        raise ApiProblem(403, "csrf", "the page's form token is missing or wrong; reload the page")


def console_middleware(table: RouteTable) -> Middleware:
    """Runs outside the access guards: a cross-site or token-less POST is refused before any
    credential is judged, and every refusal of a console route is answered as a page."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not table.is_console(request):
            return await handler(request)
        try:
            if request.method not in ("GET", "HEAD"):
                _check_origin(request)
                if table.auth_for(request) == "user":
                    await _check_csrf(request)
            return await handler(request)
        except (ApiProblem, DomainError) as exc:
            status, message = refused(exc)
            return refusal(request, status, exc.code, message)

    return middleware


def refused(exc: ApiProblem | DomainError) -> tuple[int, str]:
    """The status and message the API answers for ``exc`` (manager.api.http's map)."""
    if isinstance(exc, ApiProblem):
        return exc.status, exc.message
    return status_of(exc), exc.message


def where_to(status: int, code: str) -> str | None:
    """Where a refusal sends the browser: the login when signed out, the account page for a
    session that must first finish signing in; else nowhere (the refusal is shown)."""
    if status == 401:
        return "/console/login"
    # Only the guards' refusal of a restricted session (a 403); the same code on a 409 (2FA
    # enforced by one who has none) is a refusal to show.
    return _RESTRICTED_PAGE.get(code) if status == 403 else None


def refusal(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    htmx = request.headers.get("HX-Request") == "true"
    target = where_to(status, code)
    if target is not None:
        if htmx:  # a fragment's poll: htmx moves the whole page
            response: web.StreamResponse = web.Response(
                status=status, headers={"HX-Redirect": target}
            )
        else:
            response = web.Response(status=303, headers={"Location": target})
        if status == 401:
            clear_cookie(response)
        return response
    return render(
        request, "error.html", {"status": status, "code": code, "message": message}, status=status
    )
