"""REST routes with no ``tether`` command, on purpose: each with the reason. The parity test
(tests/manager/client/cli/test_parity.py) fails on a route that has neither a command
(:mod:`manager.client.cli.parity`) nor an entry here, and on an entry for a route that no
longer exists."""

from __future__ import annotations

__all__ = ["API_ONLY"]

# The /scim/v2 routes serve an identity provider's provisioning client, with a SCIM token
# (`tether scim token create` makes one).
_SCIM = "SCIM: an identity provider's provisioning client, with a SCIM token"
_DELEGATE_PLANE = "the delegate plane: tether-delegate calls it with its own credential"

API_ONLY: dict[str, str] = {
    "GET /healthz": "a liveness probe for load balancers and Kubernetes",
    "GET /readyz": "a readiness probe for load balancers and Kubernetes",
    "GET /metrics": "Prometheus scrapes it",
    "GET /api/v1/openapi.json": "the machine-readable API description, for tools and SDKs",
    "GET /api/v1/auth/sso/callback": "the identity provider redirects the browser here",
    "POST /api/v1/auth/sso/approve": "the browser page approves a CLI's SSO sign-in",
    "POST /api/v1/delegate/register": _DELEGATE_PLANE,
    "POST /api/v1/delegate/heartbeat": _DELEGATE_PLANE,
    "GET /api/v1/delegate/stream": _DELEGATE_PLANE,
    "GET /api/v1/delegate/tasks/next": _DELEGATE_PLANE,
    "POST /api/v1/delegate/tasks/{task_id}/acquire": "takes one queued task by id, for tools"
    " and tests; delegates are handed theirs on the stream or the long-poll",
    "POST /api/v1/delegate/tasks/{task_id}/logs": _DELEGATE_PLANE,
    "POST /api/v1/delegate/tasks/{task_id}/result": _DELEGATE_PLANE,
    "POST /hooks/{webhook_id}": "monitoring and CI systems deliver webhooks here, signed",
    "GET /api/v1/delegate/token": "tether-delegate doctor asks it with the delegate's token",
    "GET /.well-known/openid-configuration": "OIDC discovery, for relying parties that "
    "verify task tokens",
    "GET /.well-known/jwks.json": "the keys task tokens are signed with, for relying parties",
    "POST /api/v1/id-token": "a task's code asks it with its request credential, not a user",
    "GET /api/v1/auth/saml/metadata": "the SP metadata an IdP's administrator fetches (a URL)",
    "POST /api/v1/auth/saml/acs": "the IdP's answer, posted by the browser",
    "GET /scim/v2/ServiceProviderConfig": _SCIM,
    "GET /scim/v2/ResourceTypes": _SCIM,
    "GET /scim/v2/ResourceTypes/{name}": _SCIM,
    "GET /scim/v2/Schemas": _SCIM,
    "GET /scim/v2/Schemas/{schema_id}": _SCIM,
    "GET /scim/v2/Users": _SCIM,
    "POST /scim/v2/Users": _SCIM,
    "POST /scim/v2/Users/.search": _SCIM,
    "GET /scim/v2/Users/{scim_id}": _SCIM,
    "PUT /scim/v2/Users/{scim_id}": _SCIM,
    "PATCH /scim/v2/Users/{scim_id}": _SCIM,
    "DELETE /scim/v2/Users/{scim_id}": _SCIM,
    "GET /scim/v2/Groups": _SCIM,
    "POST /scim/v2/Groups": _SCIM,
    "POST /scim/v2/Groups/.search": _SCIM,
    "GET /scim/v2/Groups/{scim_id}": _SCIM,
    "PUT /scim/v2/Groups/{scim_id}": _SCIM,
    "PATCH /scim/v2/Groups/{scim_id}": _SCIM,
    "DELETE /scim/v2/Groups/{scim_id}": _SCIM,
    "POST /scim/v2/.search": _SCIM,
    "GET /scim/v2/{resource}": _SCIM,
}
