"""The OpenAPI 3.1 document, generated from the route table so it cannot drift from it."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from manager.api.http import Route
from manager.api.permissions import permission_of
from shared import __version__
from shared.protocol import ErrorBody

__all__ = ["openapi_document"]

_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{model}"
# What the middlewares in front of a handler may answer (manager.api.guards): the user API's
# key (401), the IP allowlist (403) and the key's rate limit (429); a delegate credential.
_GUARD_ERRORS: dict[str, tuple[int, ...]] = {
    "user": (401, 403, 429),
    "login": (401, 403),
    "delegate": (401,),
    "delegate_token": (401,),
    "scim": (401, 403),
}


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for r in routes:
        for m in (r.body, r.response):
            if m is not None:
                models[m.__name__] = m
    _, schema = models_json_schema([(m, "validation") for m in models.values()], ref_template=_REF)
    components = schema.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tether manager API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _operation(r: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": r.handler.__name__, "summary": r.summary}
    op["security"] = [] if r.auth in ("none", "login") else [{"bearer": []}]
    permission = permission_of(r)
    if permission is not None:
        # What the caller's groups must hold (manager.api.permissions).
        op["x-tether-permission"] = permission
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in _PARAM.findall(r.path)
    ]
    params += [
        {"name": n, "in": "query", "required": False, "schema": {"type": t}}
        for n, t in r.query.items()
    ]
    if params:
        op["parameters"] = params
    if r.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(r.body)}},
        }
    responses: dict[str, Any] = {}
    if r.streaming == "websocket":
        responses["101"] = {"description": "Switching to the WebSocket protocol"}
    elif r.streaming == "text":
        responses["200"] = {
            "description": "Plain text",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    elif r.streaming == "ndjson":
        responses["200"] = {
            "description": "A stream of JSON lines",
            "content": {"application/x-ndjson": {"schema": {"type": "object"}}},
        }
    elif r.streaming == "export":
        responses["200"] = {
            "description": "The events, one per line",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    elif r.streaming == "scim":
        # SCIM (RFC 7644): its own media type and error format, for every status.
        scim = {"application/scim+json": {"schema": {"type": "object"}}}
        for ok in ("200", "201", "204") if r.method != "GET" else ("200",):
            responses[ok] = {"description": "SCIM", "content": scim}
        for code in sorted({*r.errors, 401, 403, 413}):
            responses[str(code)] = {"description": "SCIM error", "content": scim}
        op["responses"] = responses
        return op
    elif r.response is not None:
        responses[str(r.status)] = {
            "description": "OK",
            "content": {"application/json": {"schema": _ref(r.response)}},
        }
    else:
        responses[str(r.status)] = {"description": "OK"}
    if r.path.endswith("/tasks/next"):
        responses["204"] = {"description": "No assignment within the wait"}
    for status in sorted({*r.errors, *_GUARD_ERRORS.get(r.auth, ())}):
        responses[str(status)] = {
            "description": "Error",
            "content": {"application/json": {"schema": _ref(ErrorBody)}},
        }
    op["responses"] = responses
    return op
