"""Pages from jinja2 templates, every value escaped (autoescape on for every template)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from manager.access.principal import PRINCIPAL_KEY, Principal
from manager.api.console_cookie import console_credential
from manager.api.permissions import ROUTE_PERMISSIONS
from manager.console.calls import passes

__all__ = ["may", "render", "render_text"]

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


_ENV.filters["when"] = _when
_ENV.filters["ago"] = _ago


def may(principal: Principal | None, method: str, api_path: str) -> bool:
    """Whether the guards let ``principal`` through to that API route: the same table and
    the same test as manager.api.guards' authorize (the handler may still refuse a place)."""
    if principal is not None and principal.restricted is not None:
        return False  # a restricted session is shown no page's buttons
    return passes(principal, ROUTE_PERMISSIONS.get((method, api_path)))


def _context(request: web.Request, values: dict[str, Any]) -> dict[str, Any]:
    from manager.console.security import csrf_token  # the middleware imports this module

    found = request.get(PRINCIPAL_KEY)
    principal = found if isinstance(found, Principal) else None
    session = console_credential(request)
    return {
        "principal": principal,
        "csrf": csrf_token(session) if session and principal else "",
        "may": lambda method, path: may(principal, method, path),
        # Submitting needs execute on the task's place: no form for who has it nowhere.
        "executes": principal is not None
        and any("execute" in g.actions for g in principal.grants.apps),
        "path": request.path,
        **values,
    }


def render_text(request: web.Request, template: str, values: dict[str, Any]) -> str:
    return _ENV.get_template(template).render(_context(request, values))


def render(
    request: web.Request, template: str, values: dict[str, Any], *, status: int = 200
) -> web.Response:
    return web.Response(
        text=render_text(request, template, values),
        status=status,
        content_type="text/html",
        charset="utf-8",
    )
