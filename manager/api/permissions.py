"""Which permission each user route needs: the whole matrix in one place.

- an account permission (manager.core.rbac.AccountPermission): the caller's groups must hold it;
- ``"authenticated"``: any signed-in caller; the handler checks application permissions
  itself where the resource belongs to an application (tasks), or filters what it lists;
- ``"self"``: the caller's own session and credentials (log out, enrol in 2FA, change the
  password); a restricted session (2FA enrolment pending, password expired) may use only these.

A user route missing from this table stops the manager from starting
(:func:`check_routes`), so a new route cannot ship unguarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from manager.api.http import Route
from manager.schemas.grants import AccountPermission

__all__ = ["ROUTE_PERMISSIONS", "Permission", "check_routes", "permission_of"]

Permission = AccountPermission | Literal["authenticated", "self"]

ROUTE_PERMISSIONS: dict[tuple[str, str], Permission] = {
    ("GET", "/metrics"): "authenticated",
    ("GET", "/api/v1/openapi.json"): "authenticated",
    # tasks: execute (submit, cancel) and read on the task's application and environment
    ("POST", "/api/v1/tasks"): "authenticated",
    ("GET", "/api/v1/tasks"): "authenticated",
    ("GET", "/api/v1/tasks/{task_id}"): "authenticated",
    ("POST", "/api/v1/tasks/{task_id}/cancel"): "authenticated",
    ("GET", "/api/v1/tasks/{task_id}/logs"): "authenticated",
    ("GET", "/api/v1/tasks/{task_id}/logs/follow"): "authenticated",
    ("GET", "/api/v1/deployments"): "authenticated",
    # delegates, their tokens and profiles
    ("GET", "/api/v1/delegates"): "authenticated",
    ("POST", "/api/v1/delegates/{delegate}/drain"): "manage_delegates",
    ("POST", "/api/v1/delegates/{delegate}/resume"): "manage_delegates",
    ("DELETE", "/api/v1/delegates/{delegate}"): "manage_delegates",
    ("POST", "/api/v1/tokens"): "manage_delegates",
    ("GET", "/api/v1/tokens"): "manage_delegates",
    ("DELETE", "/api/v1/tokens/{name}"): "manage_delegates",
    ("PUT", "/api/v1/profiles/{name}"): "manage_delegates",
    ("GET", "/api/v1/profiles"): "authenticated",
    ("DELETE", "/api/v1/profiles/{name}"): "manage_delegates",
    # verifications: anyone signed in reads them; defining one is governance of deployments.
    # A run is a task in the deployment's place: execute there, and read on the deployment.
    ("PUT", "/api/v1/verifications/{name}"): "manage_governance",
    ("GET", "/api/v1/verifications"): "authenticated",
    ("GET", "/api/v1/verifications/{name}"): "authenticated",
    ("DELETE", "/api/v1/verifications/{name}"): "manage_governance",
    ("POST", "/api/v1/verification-runs"): "authenticated",
    # secret managers and secrets (never a value: reads show metadata)
    ("GET", "/api/v1/secret-managers"): "authenticated",
    ("POST", "/api/v1/secret-managers"): "manage_secret_managers",
    ("GET", "/api/v1/secret-managers/{name}"): "authenticated",
    ("PATCH", "/api/v1/secret-managers/{name}"): "manage_secret_managers",
    ("DELETE", "/api/v1/secret-managers/{name}"): "manage_secret_managers",
    ("POST", "/api/v1/secret-managers/{name}/test"): "manage_secret_managers",
    ("GET", "/api/v1/secrets"): "authenticated",
    ("POST", "/api/v1/secrets"): "manage_secrets",
    ("GET", "/api/v1/secrets/{name}"): "authenticated",
    ("PATCH", "/api/v1/secrets/{name}"): "manage_secrets",
    ("DELETE", "/api/v1/secrets/{name}"): "manage_secrets",
    ("GET", "/api/v1/secrets/{name}/versions"): "authenticated",
    ("POST", "/api/v1/secrets/{name}/migrate"): "manage_secrets",
    ("PUT", "/api/v1/secrets/{name}/scope"): "manage_secrets",
    ("PUT", "/api/v1/secret-managers/{name}/scope"): "manage_secret_managers",
    # API keys and their account defaults
    ("POST", "/api/v1/api-keys"): "manage_api_keys",
    ("GET", "/api/v1/api-keys"): "manage_api_keys",
    ("DELETE", "/api/v1/api-keys/{name}"): "manage_api_keys",
    ("GET", "/api/v1/api-key-defaults"): "manage_api_keys",
    ("PUT", "/api/v1/api-key-defaults"): "manage_api_keys",
    # the IP allowlist: who may reach the account at all is governance
    ("GET", "/api/v1/allowlist"): "manage_governance",
    ("POST", "/api/v1/allowlist/enable"): "manage_governance",
    ("POST", "/api/v1/allowlist/disable"): "manage_governance",
    ("POST", "/api/v1/allowlist/entries"): "manage_governance",
    ("DELETE", "/api/v1/allowlist/entries/{entry_id}"): "manage_governance",
    ("POST", "/api/v1/allowlist/entries/{entry_id}/enable"): "manage_governance",
    ("POST", "/api/v1/allowlist/entries/{entry_id}/disable"): "manage_governance",
    ("GET", "/api/v1/allowlist/trusted-proxies"): "manage_governance",
    ("PUT", "/api/v1/allowlist/trusted-proxies"): "manage_governance",
    # the audit trail
    ("GET", "/api/v1/audit"): "view_audit",
    ("GET", "/api/v1/audit/export"): "view_audit",
    ("GET", "/api/v1/audit/verify"): "view_audit",
    ("GET", "/api/v1/audit/filters"): "view_audit",
    ("POST", "/api/v1/audit/filters"): "view_audit",
    ("DELETE", "/api/v1/audit/filters/{name}"): "view_audit",
    # users, groups, applications, environments
    ("GET", "/api/v1/users"): "manage_users",
    ("POST", "/api/v1/users"): "manage_users",
    ("GET", "/api/v1/users/{user}"): "manage_users",
    ("PATCH", "/api/v1/users/{user}"): "manage_users",
    ("POST", "/api/v1/users/{user}/disable"): "manage_users",
    ("POST", "/api/v1/users/{user}/enable"): "manage_users",
    ("POST", "/api/v1/users/{user}/invite"): "manage_users",
    ("POST", "/api/v1/users/{user}/unlock"): "manage_users",
    ("POST", "/api/v1/users/{user}/reset-2fa"): "manage_users",
    ("POST", "/api/v1/users/{user}/logout"): "manage_users",
    ("PUT", "/api/v1/users/{user}/sso-link"): "manage_users",
    ("DELETE", "/api/v1/users/{user}/sso-link"): "manage_users",
    ("GET", "/api/v1/groups"): "authenticated",
    ("POST", "/api/v1/groups"): "manage_user_groups",
    ("GET", "/api/v1/groups/{group}"): "authenticated",
    ("PATCH", "/api/v1/groups/{group}"): "manage_user_groups",
    ("DELETE", "/api/v1/groups/{group}"): "manage_user_groups",
    ("GET", "/api/v1/apps"): "authenticated",
    ("POST", "/api/v1/apps"): "manage_applications",
    ("DELETE", "/api/v1/apps/{app}"): "manage_applications",
    ("GET", "/api/v1/apps/{app}/envs"): "authenticated",
    ("POST", "/api/v1/apps/{app}/envs"): "manage_applications",
    ("PATCH", "/api/v1/apps/{app}/envs/{env}"): "manage_applications",
    ("DELETE", "/api/v1/apps/{app}/envs/{env}"): "manage_applications",
    # authentication settings (password policy, 2FA enforcement, email domains)
    ("GET", "/api/v1/auth/settings"): "manage_users",
    ("PUT", "/api/v1/auth/settings"): "manage_users",
    ("GET", "/api/v1/auth/sso"): "manage_users",
    ("PUT", "/api/v1/auth/sso"): "manage_users",
    # directory sign-in: LDAP settings
    ("GET", "/api/v1/auth/ldap"): "manage_users",
    ("PUT", "/api/v1/auth/ldap"): "manage_users",
    ("DELETE", "/api/v1/auth/ldap"): "manage_users",
    ("GET", "/api/v1/auth/saml"): "manage_users",
    ("PUT", "/api/v1/auth/saml"): "manage_users",
    ("DELETE", "/api/v1/auth/saml"): "manage_users",
    # SCIM tokens (the /scim/v2 routes take those tokens, not a user's credential)
    ("POST", "/api/v1/scim/tokens"): "manage_users",
    ("GET", "/api/v1/scim/tokens"): "manage_users",
    ("DELETE", "/api/v1/scim/tokens/{name}"): "manage_users",
    # the caller's own session
    ("GET", "/api/v1/auth/me"): "self",
    ("POST", "/api/v1/auth/logout"): "self",
    ("POST", "/api/v1/auth/password"): "self",
    ("POST", "/api/v1/auth/totp/enrol"): "self",
    ("POST", "/api/v1/auth/totp/confirm"): "self",
    ("POST", "/api/v1/auth/totp/verify"): "self",
    ("POST", "/api/v1/auth/sso/link"): "self",
    # retention (manager.api.retention)
    ("GET", "/api/v1/retention"): "manage_governance",
    ("PUT", "/api/v1/retention"): "manage_governance",
    # issue 18: freeze windows (governance), incoming webhooks, incidents
    ("POST", "/api/v1/freezes"): "manage_governance",
    ("GET", "/api/v1/freezes"): "authenticated",
    ("DELETE", "/api/v1/freezes/{name}"): "manage_governance",
    ("POST", "/api/v1/webhooks"): "manage_webhooks",
    ("GET", "/api/v1/webhooks"): "manage_webhooks",
    ("GET", "/api/v1/webhooks/{name}"): "manage_webhooks",
    ("DELETE", "/api/v1/webhooks/{name}"): "manage_webhooks",
    ("POST", "/api/v1/webhooks/{name}/rotate-secret"): "manage_webhooks",
    ("GET", "/api/v1/incidents"): "manage_incidents",
    ("GET", "/api/v1/incidents/{incident_id}"): "manage_incidents",
    ("POST", "/api/v1/incidents/{incident_id}/ack"): "manage_incidents",
    ("POST", "/api/v1/incidents/{incident_id}/resolve"): "manage_incidents",
    ("POST", "/api/v1/incidents/{incident_id}/notes"): "manage_incidents",
    ("GET", "/api/v1/incident-retention"): "manage_incidents",
    ("PUT", "/api/v1/incident-retention"): "manage_governance",
    # runbooks: update (define), read and execute (run, cancel) on their app and env, checked
    # by the handlers; approving needs membership of a group the step names
    ("PUT", "/api/v1/runbooks/{name}"): "authenticated",
    ("GET", "/api/v1/runbooks"): "authenticated",
    ("GET", "/api/v1/runbooks/{name}"): "authenticated",
    ("DELETE", "/api/v1/runbooks/{name}"): "authenticated",
    ("POST", "/api/v1/runbooks/{name}/runs"): "authenticated",
    ("GET", "/api/v1/runbook-runs"): "authenticated",
    ("GET", "/api/v1/runbook-runs/{run_id}"): "authenticated",
    ("POST", "/api/v1/runbook-runs/{run_id}/approve"): "authenticated",
    ("POST", "/api/v1/runbook-runs/{run_id}/reject"): "authenticated",
    ("POST", "/api/v1/runbook-runs/{run_id}/cancel"): "authenticated",
    # governance standards
    ("PUT", "/api/v1/standards/{name}"): "manage_governance",
    ("GET", "/api/v1/standards"): "authenticated",
    ("GET", "/api/v1/standards/{name}"): "authenticated",
    ("DELETE", "/api/v1/standards/{name}"): "manage_governance",
}


def permission_of(route: Route) -> Permission | None:
    return ROUTE_PERMISSIONS.get((route.method, route.path))


def check_routes(routes: Iterable[Route]) -> None:
    """Refuse to build an app whose user routes are not all in the matrix."""
    missing = [
        f"{r.method} {r.path}"
        for r in routes
        if r.auth == "user" and (r.method, r.path) not in ROUTE_PERMISSIONS
    ]
    if missing:
        raise RuntimeError(f"user routes without a permission: {', '.join(missing)}")
