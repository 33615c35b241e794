"""Every user route in the OpenAPI document has a `tether` command, or is listed as API-only
with its reason (manager.client.cli.api_only). To add a command for a new route, call
``covers(parser, "METHOD /path")`` where the command is defined (manager.client.cli.parity)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import create_api_key
from manager.client.cli.api_only import API_ONLY
from manager.client.cli.main import build_parser
from manager.client.cli.parity import COMMAND_ROUTES, command_routes, commands
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store


@pytest.fixture
async def document(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    store = open_store(tmp_path)
    await store.open()
    try:
        app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
        _, key = await create_api_key(store, "test", groups=(ADMIN_GROUP,))
        async with TestClient(TestServer(app)) as client:
            resp = await client.get(
                "/api/v1/openapi.json", headers={"Authorization": f"Bearer {key}"}
            )
            yield await resp.json()
    finally:
        await store.close()


def _routes(doc: dict[str, Any]) -> set[str]:
    return {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}


async def test_every_route_has_a_command_or_a_reason(document: dict[str, Any]) -> None:
    routes = _routes(document)
    covered = command_routes(build_parser())

    missing = sorted(routes - covered.keys() - API_ONLY.keys())
    assert not missing, (
        f"routes with no tether command: {missing}; add one and covers(parser, route) it "
        "(manager/client/cli/parity.py), or list it in manager/client/cli/api_only.py with why"
    )
    # No stale entries: every mapped or API-only route exists, and none is both.
    assert sorted(covered.keys() - routes) == []
    assert sorted(API_ONLY.keys() - routes) == []
    assert sorted(API_ONLY.keys() & covered.keys()) == []
    assert all(reason.strip() for reason in API_ONLY.values())


def test_the_table_names_only_commands_that_exist() -> None:
    words = {w for w, _ in commands(build_parser())}
    assert sorted(COMMAND_ROUTES.keys() - words) == []
