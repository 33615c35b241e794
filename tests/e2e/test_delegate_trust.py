"""Delegate tokens, scopes and identity against the real commands (docs/threat-model.md).

A token narrowed to some environments keeps its delegates to them whatever they claim; a
delegate's id stays with the token and key it first registered with; a revoked token's
credentials are refused from the moment of the revocation, a SIGKILL restart included.
Registrations and acquires are made over HTTPS by hand where the point is what the manager
answers an attacker holding a token or a credential, not what the real delegate would send.
"""

from __future__ import annotations

import base64
import json
import signal
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.protocol import PROTOCOL_VERSION
from shared.tls import client_context
from tests.e2e.harness import BIN, Cluster

EXIT_AUTH = 3


def new_key() -> str:
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class DelegateHttp:
    """The delegate plane as an attacker with a token or a credential would call it."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def call(
        self, method: str, path: str, bearer: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        connector = aiohttp.TCPConnector(ssl=client_context(self.cluster.ca_file))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.request(
                method,
                f"{self.cluster.url}/api/v1/delegate{path}",
                json=body,
                headers={"Authorization": f"Bearer {bearer}"},
            ) as resp,
        ):
            text = await resp.text()
            return resp.status, json.loads(text) if text else {}

    async def register(
        self, token: str, name: str, key: str, selectors: tuple[str, ...] = ()
    ) -> tuple[int, dict[str, Any]]:
        return await self.call(
            "POST",
            "/register",
            token,
            {
                "name": name,
                "hostname": "attacker",
                "version": "0.1.0",
                "protocol_version": PROTOCOL_VERSION,
                "selectors": list(selectors),
                "capacity": 4,
                "task_types": ["shell"],
                "public_key": key,
            },
        )

    async def acquire(self, credential: str, task_id: str) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", f"/tasks/{task_id}/acquire", credential)


async def ok(cluster: Cluster, *argv: str) -> str:
    res = await cluster.tether(*argv)
    assert res.code == 0, f"{argv}: {res.stderr}"
    return res.last_line if res.stdout.strip() else ""


async def task_state(cluster: Cluster, task_id: str) -> str:
    res = await cluster.tether("task", "get", task_id, "--output", "json")
    assert res.code == 0, res.stderr
    return str(json.loads(res.stdout)["state"])


async def checkout(cluster: Cluster) -> None:
    await ok(cluster, "app", "create", "checkout")
    await ok(cluster, "env", "create", "checkout", "prod", "--type", "production")
    await ok(cluster, "env", "create", "checkout", "staging", "--type", "non_production")


async def test_a_non_production_token_never_reaches_prod(cluster: Cluster) -> None:
    await cluster.start_manager()
    await checkout(cluster)
    dev = await ok(
        cluster,
        "token",
        "create",
        "dev-hosts",
        "--scope-env-type",
        "non_production",
        "--selector",
        "dev-pool",
    )
    listed = await cluster.tether("token", "list")
    assert "type non_production; selectors dev-pool" in listed.stdout

    # Claiming prod selectors with it: refused at registration, named in the message.
    greedy = await cluster.start_delegate("greedy", "prod-pool", token=dev, wait_mode=None)
    refused = await greedy.wait_event("cannot register yet")
    assert "prod-pool" in refused["error"]
    await greedy.stop(signal.SIGKILL)

    # Its selectors and prod's the same: a prod task still never reaches it.
    delegate = await cluster.start_delegate("dev-1", "dev-pool", token=dev)
    prod = await ok(
        cluster,
        "task",
        "submit",
        "--app", "checkout", "--app-env", "prod",
        "--selector", "dev-pool",
        "--secret-env", "DB_PASSWORD=prod-only-value",
        # Unscaled: the default (300 s at --time-scale 0.05) ran out on a loaded machine
        # before the last check that it is still queued, nobody's.
        "--queue-timeout", "3600",
        "--", "echo", "prod",
    )  # fmt: skip
    staging = await ok(
        cluster,
        "task",
        "submit",
        "--app", "checkout", "--app-env", "staging",
        "--selector", "dev-pool",
        "--", "echo", "staging",
    )  # fmt: skip
    await delegate.wait_event("task finished", task_id=staging, status="succeeded")
    assert await task_state(cluster, prod) == "queued"
    assert not [e for e in delegate.events() if e.get("task_id") == prod]
    delegates = json.loads((await cluster.tether("delegate", "list", "--output", "json")).stdout)
    (view,) = delegates["delegates"]
    assert view["token"] == "dev-hosts"
    assert view["scope"]["env_types"] == ["non_production"]

    # Acquiring it by id with the same token learns nothing: the answer for no such task.
    api = DelegateHttp(cluster)
    status, body = await api.register(dev, "probe", new_key(), ("dev-pool",))
    assert status == 200, body
    credential = body["session_token"]
    refused_status, refused_body = await api.acquire(credential, prod)
    missing_status, missing_body = await api.acquire(credential, "task_nope")
    assert refused_status == missing_status == 404
    assert refused_body["error"]["code"] == missing_body["error"]["code"] == "not_found"
    assert refused_body["error"]["message"] == f"no task {prod}"
    assert "prod-only-value" not in json.dumps(refused_body)
    assert await task_state(cluster, prod) == "queued"


async def test_a_dedicated_environment_takes_only_delegates_scoped_to_it(cluster: Cluster) -> None:
    await cluster.start_manager()
    await checkout(cluster)
    await ok(cluster, "env", "update", "checkout", "prod", "--dedicated-delegates")
    wide = await ok(cluster, "token", "create", "everywhere")
    named = await ok(cluster, "token", "create", "prod-hosts", "--scope", "checkout/prod")
    anyone = await cluster.start_delegate("anyone", "pool", token=wide)
    task_id = await ok(
        cluster, "task", "submit", "--app", "checkout", "--app-env", "prod", "--selector", "pool",
        "--", "echo", "dedicated",
    )  # fmt: skip
    dedicated = await cluster.start_delegate("prod-1", "pool", token=named)
    await dedicated.wait_event("task finished", task_id=task_id, status="succeeded")
    assert not [e for e in anyone.events() if e.get("task_id") == task_id]


async def test_identity_takeover_and_low_order_keys_are_refused(cluster: Cluster) -> None:
    await cluster.start_manager()
    api = DelegateHttp(cluster)
    first = await cluster.token("owner")
    second = await cluster.token("intruder")
    key = new_key()
    status, body = await api.register(first, "web-1", key)
    assert status == 200, body
    victim = body["delegate_id"]

    # The victim's public key (public, so anyone may have it) under another token.
    status, body = await api.register(second, "web-1b", key, ("prod",))
    assert status == 409, body
    assert "another token" in body["error"]["message"]
    # Its name under another token, with a key of the intruder's own.
    status, body = await api.register(second, "web-1", new_key())
    assert status == 409, body
    # Nothing changed: one delegate, still the owner's, with its own selectors.
    listed = json.loads((await cluster.tether("delegate", "list", "--output", "json")).stdout)
    (view,) = listed["delegates"]
    assert (view["id"], view["token"], view["selectors"]) == (victim, "owner", [])

    # Keys of low order (every shared secret all-zero) and keys that are not 32 bytes.
    for raw in (bytes(32), (1).to_bytes(32, "little"), b"short"):
        status, body = await api.register(second, "odd", base64.b64encode(raw).decode())
        assert status == 400, body
        assert body["error"]["field"] == "public_key"

    # A delegate that is gone is deleted by name, which frees its key for another token.
    assert cluster.manager is not None
    await cluster.manager.wait_event("delegate lost", delegate_id=victim)
    assert (await cluster.tether("delegate", "delete", "web-1")).code == 0
    status, body = await api.register(second, "web-1", key)
    assert status == 200, body
    assert body["delegate_id"] != victim
    audit = await cluster.tether("audit", "list", "--output", "json")
    assert "deleted 1 delegate(s) matching 'web-1'" in audit.stdout

    # A connected one only with --force; it is then told it is revoked, and stops.
    live = await cluster.start_delegate("live")
    refused = await cluster.tether("delegate", "delete", "live")
    assert refused.code != 0
    assert "connected" in refused.stderr
    assert (await cluster.tether("delegate", "delete", "live", "--force")).code == 0
    assert await live.wait_exit() == EXIT_AUTH


async def test_a_revoked_token_gets_no_acquire_right_after_a_sigkill_restart(
    running: Cluster,
) -> None:
    api = DelegateHttp(running)
    token = await running.token("stolen")
    status, body = await api.register(token, "thief", new_key(), ("pool",))
    assert status == 200, body
    credential = body["session_token"]
    # A day in the queue: the restart below must not outlast the queue timeout on a loaded
    # machine (the manager runs on scaled time), or the task would end "expired".
    task_id = await ok(
        running, "task", "submit", "--selector", "pool", "--queue-timeout", "86400",
        "--secret-env", "API_KEY=must-not-leak", "--", "echo", "x",
    )  # fmt: skip
    # Revoked on the host, straight into the store, then the manager dies at once.
    res = await running.run(
        str(BIN / "tether-manager"),
        "token",
        "revoke",
        "stolen",
        "--data-dir",
        str(running.data_dir),
        *running.store_args(),
    )
    assert res.code == 0, res.stderr
    await running.restart_manager(signal.SIGKILL)
    answers = [await api.acquire(credential, task_id) for _ in range(10)]
    assert [s for s, _ in answers] == [401] * 10, answers
    assert {b["error"]["code"] for _, b in answers} == {"token_revoked"}
    assert "must-not-leak" not in json.dumps(answers)
    assert await task_state(running, task_id) == "queued"
