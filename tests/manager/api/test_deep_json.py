"""A deeply nested JSON body is a clear 400 on every route that takes one, signed in or not
(the login routes included), before anything parses it: never a 500 from exhausting the
stack."""

from __future__ import annotations

import json
import re

import pytest

from manager.api.http import MAX_JSON_DEPTH, nesting_depth
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
# Shallow enough for json.loads, too deep for the rule (and for the models' recursion).
MIDDLING = b'{"payload":' * 600 + b"{}" + b"}" * 600


async def test_every_json_route_refuses_a_deep_body_with_a_400(m: Manager) -> None:
    status, doc = await m.call("GET", "/api/v1/openapi.json")
    assert status == 200
    routes = [
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "application/json" in op.get("requestBody", {}).get("content", {})
        # The delegate plane answers 401 to a user's key before reading a body; its bodies
        # go through the same parse_body.
        and not path.startswith("/api/v1/delegate/")
    ]
    # The unauthenticated ones are the point: anyone can reach them.
    assert {"/api/v1/auth/login", "/api/v1/auth/invite/accept", "/api/v1/auth/sso/poll"} <= {
        p for _, p in routes
    }
    wrong = []
    for method, path in routes:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for body in (DEEP, DEEP_OBJECT, MIDDLING):
            resp = await m.client.request(
                method,
                concrete,
                data=body,
                headers=m.auth(None, **{"Content-Type": "application/json"}),
            )
            answer = await resp.json()
            if resp.status != 400 or answer["error"]["code"] != "bad_json":
                wrong.append(f"{method} {path}: {resp.status} {answer}")
            elif (
                answer["error"]["message"] != f"body is nested deeper than {MAX_JSON_DEPTH} levels"
            ):
                wrong.append(f"{method} {path}: {answer}")
    assert wrong == []


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b'"[[[["', 0),
        (b"7", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[", {"k": "]]]"}]', 2),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH + 1),
        (b"[" + b"[]," * 1000 + b"[]]", 2),
    ],
)
def test_nesting_depth_counts_lists_and_objects(raw: bytes, depth: int) -> None:
    assert nesting_depth(json.loads(raw), stop_after=MAX_JSON_DEPTH) == depth


def test_nesting_depth_stops_counting_past_the_limit() -> None:
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    assert nesting_depth(deep, stop_after=5) == 6
