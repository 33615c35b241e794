"""Which ``tether`` command calls which REST route: every user route in the OpenAPI document
has a command, or is listed in :mod:`manager.client.cli.api_only` with its reason
(tests/manager/client/cli/test_parity.py walks the document and fails otherwise).

A new command says what it covers where it is defined, so no shared table needs an edit::

    p = sub.add_parser("delete", help="delete a runbook")
    covers(p, "DELETE /api/v1/runbooks/{name}")

The table below is for the commands written before :func:`covers` existed; either way the
test reads both.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

__all__ = ["COMMAND_ROUTES", "command_routes", "commands", "covers"]

_KEY = "cli_routes"

# "command words" -> the routes it calls ("METHOD /path" as in the OpenAPI document).
COMMAND_ROUTES: dict[str, tuple[str, ...]] = {
    "task run": ("POST /api/v1/tasks", "GET /api/v1/tasks/{task_id}/logs/follow"),
    "task submit": ("POST /api/v1/tasks",),
    "task get": ("GET /api/v1/tasks/{task_id}",),
    "task list": ("GET /api/v1/tasks",),
    "task logs": ("GET /api/v1/tasks/{task_id}/logs", "GET /api/v1/tasks/{task_id}/logs/follow"),
    "task cancel": ("POST /api/v1/tasks/{task_id}/cancel",),
    "deployments": ("GET /api/v1/deployments",),
    "delegate list": ("GET /api/v1/delegates",),
    "delegate drain": ("POST /api/v1/delegates/{delegate}/drain",),
    "delegate resume": ("POST /api/v1/delegates/{delegate}/resume",),
    "delegate delete": ("DELETE /api/v1/delegates/{delegate}",),
    "profile set": ("PUT /api/v1/profiles/{name}",),
    "profile list": ("GET /api/v1/profiles",),
    "profile delete": ("DELETE /api/v1/profiles/{name}",),
    "token create": ("POST /api/v1/tokens",),
    "token list": ("GET /api/v1/tokens",),
    "token revoke": ("DELETE /api/v1/tokens/{name}",),
    "audit list": ("GET /api/v1/audit",),
    "audit export": ("GET /api/v1/audit/export",),
    "audit verify": ("GET /api/v1/audit/verify",),
    "audit filter save": ("POST /api/v1/audit/filters",),
    "audit filter list": ("GET /api/v1/audit/filters",),
    "audit filter delete": ("DELETE /api/v1/audit/filters/{name}",),
    "secret-manager create": ("POST /api/v1/secret-managers",),
    "secret-manager list": ("GET /api/v1/secret-managers",),
    "secret-manager get": ("GET /api/v1/secret-managers/{name}",),
    "secret-manager update": ("PATCH /api/v1/secret-managers/{name}",),
    "secret-manager delete": ("DELETE /api/v1/secret-managers/{name}",),
    "secret-manager test": ("POST /api/v1/secret-managers/{name}/test",),
    "secret-manager scope": ("PUT /api/v1/secret-managers/{name}/scope",),
    "secret create": ("POST /api/v1/secrets",),
    "secret update": ("PATCH /api/v1/secrets/{name}",),
    "secret list": ("GET /api/v1/secrets",),
    "secret get": ("GET /api/v1/secrets/{name}",),
    "secret versions": ("GET /api/v1/secrets/{name}/versions",),
    "secret delete": ("DELETE /api/v1/secrets/{name}",),
    "secret scope": ("PUT /api/v1/secrets/{name}/scope",),
    "secret migrate": ("POST /api/v1/secrets/{name}/migrate",),
    "api-key create": ("POST /api/v1/api-keys",),
    "api-key list": ("GET /api/v1/api-keys",),
    "api-key revoke": ("DELETE /api/v1/api-keys/{name}",),
    "api-key defaults": ("GET /api/v1/api-key-defaults", "PUT /api/v1/api-key-defaults"),
    "allowlist list": ("GET /api/v1/allowlist",),
    "allowlist add": ("POST /api/v1/allowlist/entries",),
    "allowlist remove": ("DELETE /api/v1/allowlist/entries/{entry_id}",),
    "allowlist enable": (
        "POST /api/v1/allowlist/enable",
        "POST /api/v1/allowlist/entries/{entry_id}/enable",
    ),
    "allowlist disable": (
        "POST /api/v1/allowlist/disable",
        "POST /api/v1/allowlist/entries/{entry_id}/disable",
    ),
    "allowlist trusted-proxies": (
        "GET /api/v1/allowlist/trusted-proxies",
        "PUT /api/v1/allowlist/trusted-proxies",
    ),
    "user create": ("POST /api/v1/users",),
    "user list": ("GET /api/v1/users",),
    "user disable": ("POST /api/v1/users/{user}/disable",),
    "user enable": ("POST /api/v1/users/{user}/enable",),
    "user invite": ("POST /api/v1/users/{user}/invite",),
    "user unlock": ("POST /api/v1/users/{user}/unlock",),
    "user reset-2fa": ("POST /api/v1/users/{user}/reset-2fa",),
    "user logout": ("POST /api/v1/users/{user}/logout",),
    "user sso-link": ("PUT /api/v1/users/{user}/sso-link",),
    "user sso-unlink": ("DELETE /api/v1/users/{user}/sso-link",),
    "group create": ("POST /api/v1/groups",),
    "group update": ("PATCH /api/v1/groups/{group}",),
    "group list": ("GET /api/v1/groups",),
    "app create": ("POST /api/v1/apps",),
    "app list": ("GET /api/v1/apps",),
    "env create": ("POST /api/v1/apps/{app}/envs",),
    "env update": ("PATCH /api/v1/apps/{app}/envs/{env}",),
    "env list": ("GET /api/v1/apps/{app}/envs",),
    "login": (
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/invite/accept",
        "POST /api/v1/auth/sso/start",
        "POST /api/v1/auth/sso/poll",
        "POST /api/v1/auth/totp/verify",
    ),
    "link-sso": ("POST /api/v1/auth/sso/link", "POST /api/v1/auth/sso/poll"),
    "logout": ("POST /api/v1/auth/logout",),
    "whoami": ("GET /api/v1/auth/me",),
    "auth-settings": ("GET /api/v1/auth/settings", "PUT /api/v1/auth/settings"),
    "retention get": ("GET /api/v1/retention",),
    "retention set": ("GET /api/v1/retention", "PUT /api/v1/retention"),
    # runbooks and standards (manager/client/cli/runbooks.py)
    "runbook apply": ("PUT /api/v1/runbooks/{name}",),
    "runbook diff": ("GET /api/v1/runbooks/{name}",),
    "runbook export": ("GET /api/v1/runbooks/{name}",),
    "runbook get": ("GET /api/v1/runbooks/{name}",),
    "runbook list": ("GET /api/v1/runbooks",),
    "runbook delete": ("DELETE /api/v1/runbooks/{name}",),
    "runbook run": ("POST /api/v1/runbooks/{name}/runs", "GET /api/v1/runbook-runs/{run_id}"),
    "runbook runs": ("GET /api/v1/runbook-runs",),
    "runbook run-get": ("GET /api/v1/runbook-runs/{run_id}",),
    "runbook approve": ("POST /api/v1/runbook-runs/{run_id}/approve",),
    "runbook reject": ("POST /api/v1/runbook-runs/{run_id}/reject",),
    "runbook cancel": ("POST /api/v1/runbook-runs/{run_id}/cancel",),
    "standard apply": ("PUT /api/v1/standards/{name}",),
    "standard list": ("GET /api/v1/standards",),
    "standard get": ("GET /api/v1/standards/{name}",),
    "standard delete": ("DELETE /api/v1/standards/{name}",),
    # freezes, webhooks, incidents (manager/client/cli/incidents.py)
    "freeze create": ("POST /api/v1/freezes",),
    "freeze list": ("GET /api/v1/freezes",),
    "freeze delete": ("DELETE /api/v1/freezes/{name}",),
    "webhook create": ("POST /api/v1/webhooks",),
    "webhook list": ("GET /api/v1/webhooks",),
    "webhook get": ("GET /api/v1/webhooks/{name}",),
    "webhook delete": ("DELETE /api/v1/webhooks/{name}",),
    "webhook rotate-secret": ("POST /api/v1/webhooks/{name}/rotate-secret",),
    "incident list": ("GET /api/v1/incidents",),
    "incident get": ("GET /api/v1/incidents/{incident_id}",),
    "incident ack": ("POST /api/v1/incidents/{incident_id}/ack",),
    "incident resolve": ("POST /api/v1/incidents/{incident_id}/resolve",),
    "incident note": ("POST /api/v1/incidents/{incident_id}/notes",),
    "incident retention": ("GET /api/v1/incident-retention", "PUT /api/v1/incident-retention"),
}


def covers(parser: argparse.ArgumentParser, *routes: str) -> None:
    """Record that the command of ``parser`` calls ``routes`` ("METHOD /path")."""
    known: tuple[str, ...] = parser.get_default(_KEY) or ()
    parser.set_defaults(**{_KEY: (*known, *routes)})


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command of ``parser`` as ("words", its parser)."""

    def walk(
        p: argparse.ArgumentParser, words: tuple[str, ...]
    ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(words), p
            return
        for action in subs:
            for name, sub in action.choices.items():
                yield from walk(sub, (*words, name))

    yield from walk(parser, ())


def command_routes(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Route -> the commands that call it, from the table and from :func:`covers`."""
    found: dict[str, set[str]] = {}
    for words, p in commands(parser):
        for route in (*COMMAND_ROUTES.get(words, ()), *(p.get_default(_KEY) or ())):
            found.setdefault(route, set()).add(words)
    return found
