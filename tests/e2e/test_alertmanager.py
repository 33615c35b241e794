"""Prometheus Alertmanager (Debian's package) as a real sender: an alert posted to its API
reaches Tether through its webhook (bearer token, TLS with the manager's CA), opens an
incident and runs the runbook on a real delegate; the alert resolved, its "resolved"
notification updates the same incident."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import WAIT, Cluster, Proc

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"

pytestmark = pytest.mark.skipif(
    not Path(ALERTMANAGER).exists(), reason="prometheus-alertmanager is not installed"
)

# A hostile alert name: were it ever shell text, the task's log would show "pwned".
ALERT_NAME = "HighLoad$(echo pwned)`echo pwned`"

RUNBOOK = {
    "name": "restart-db",
    "app": "shop",
    "env": "dev",
    "inputs": [{"name": "alert", "type": "string"}],
    "steps": [{"name": "restart", "kind": "shell", "script": 'echo "restarting for $INPUT_ALERT"'}],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.c = cluster
        self.session = session
        self.ssl = ssl.create_default_context(cafile=str(cluster.ca_file))

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method,
            f"{self.c.url}{path}",
            json=body,
            ssl=self.ssl,
            headers={"Authorization": f"Bearer {self.c.admin_key}"},
        ) as resp:
            data = await resp.json()
            assert 200 <= resp.status < 300, (method, path, resp.status, data)
            return data


async def _until(read: Any, check: Any, what: str) -> Any:
    """Read again until ``check`` holds: each read is the state, not a timing guess."""
    async with asyncio.timeout(WAIT):
        while True:
            got = await read()
            if check(got):
                return got
            await asyncio.sleep(0.2)
    raise AssertionError(what)  # pragma: no cover


async def _start_alertmanager(
    cluster: Cluster, config: Path, hook: dict[str, Any]
) -> tuple[Proc, str]:
    port = _free_port()
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"resolve_timeout": "5s"},
                "route": {
                    "receiver": "tether",
                    "group_by": ["alertname"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "tether",
                        "webhook_configs": [
                            {
                                "url": f"{cluster.url}{hook['path']}",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {
                                        "type": "Bearer",
                                        "credentials": hook["secret"],
                                    },
                                    "tls_config": {"ca_file": str(cluster.ca_file)},
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    storage = config.parent / "alertmanager-data"
    storage.mkdir()
    proc = Proc(
        "alertmanager",
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ],
    )
    await proc.start()
    cluster.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    await proc.wait_until(
        lambda: any("Listening on" in line for line in proc.stderr), "alertmanager listening"
    )
    return proc, url


def _alert(ends: float) -> list[dict[str, Any]]:
    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")

    return [
        {
            "labels": {"alertname": ALERT_NAME, "severity": "critical", "instance": "db-1"},
            "annotations": {"summary": "db-1 load is high"},
            "startsAt": iso(time.time() - 60),
            "endsAt": iso(ends),
        }
    ]


async def test_alertmanager_opens_runs_and_resolves_one_incident(
    cluster: Cluster, tmp_path: Path
) -> None:
    manager = await cluster.start_manager()
    await cluster.start_delegate("d1")
    async with aiohttp.ClientSession() as session:
        api = Api(cluster, session)
        await api.call("POST", "/api/v1/apps", {"name": "shop"})
        await api.call("POST", "/api/v1/apps/shop/envs", {"name": "dev", "type": "non_production"})
        await api.call(
            "POST",
            "/api/v1/groups",
            {
                "name": "responders",
                "app_permissions": [{"apps": "all", "envs": "all", "actions": ["read", "execute"]}],
            },
        )
        await api.call("PUT", "/api/v1/runbooks/restart-db", RUNBOOK)
        made = await cluster.tether(
            "--output",
            "json",
            "webhook",
            "create",
            "am",
            "--kind",
            "alertmanager",
            "--auth",
            "bearer",
            "--runbook",
            "restart-db",
            "--map",
            "alert=commonLabels.alertname",
            "--group",
            "responders",
        )
        assert made.code == 0, made.stderr
        hook = json.loads(made.stdout)

        am, am_url = await _start_alertmanager(cluster, tmp_path / "alertmanager.yml", hook)
        async with session.post(f"{am_url}/api/v2/alerts", json=_alert(time.time() + 3600)) as r:
            assert r.status == 200, await r.text()
        fired = await manager.wait_event("webhook delivery accepted", webhook="am")
        incident_id = fired["incident_id"]
        assert incident_id is not None
        run_id = fired["run_id"]
        assert run_id is not None

        run = await _until(
            lambda: api.call("GET", f"/api/v1/runbook-runs/{run_id}"),
            lambda r: r["state"] in ("succeeded", "failed", "cancelled"),
            "the run to end",
        )
        assert run["state"] == "succeeded", run
        assert (run["incident_id"], run["trigger"]) == (incident_id, "webhook:am")
        task_id = run["steps"][0]["task_id"]
        logs = await api.call("GET", f"/api/v1/tasks/{task_id}/logs")
        # The mapped value reached the script as data (INPUT_ALERT), never as shell text:
        # the command substitution in the alert's name is printed, not run.
        assert [line["text"] for line in logs["lines"]] == [f"restarting for {ALERT_NAME}"]

        incident = await api.call("GET", f"/api/v1/incidents/{incident_id}")
        assert (incident["status"], incident["title"], incident["severity"]) == (
            "open",
            "db-1 load is high",
            "critical",
        )

        # resolved: the same alert posted again with endsAt in the past
        count = len(manager.events())
        async with session.post(f"{am_url}/api/v2/alerts", json=_alert(time.time() - 1)) as r:
            assert r.status == 200, await r.text()
        resolved = await manager.wait_event("webhook delivery accepted", after=count, webhook="am")
        assert resolved["incident_id"] == incident_id
        assert resolved["run_id"] is None  # a resolved alert starts nothing
        listed = await cluster.tether("--output", "json", "incident", "list")
        incidents = json.loads(listed.stdout)["incidents"]
        assert [(i["id"], i["status"]) for i in incidents] == [(incident_id, "resolved")]
        shown = await cluster.tether("incident", "get", incident_id)
        assert "resolved" in shown.stdout
        assert f"runbook restart-db: {run_id}" in shown.stdout
        await am.stop()

        # the rest of the CLI over the same manager
        noted = await cluster.tether("incident", "note", incident_id, "db-1", "restarted")
        assert noted.code == 0, noted.stderr
        acked = await cluster.tether("--output", "json", "incident", "ack", incident_id)
        assert json.loads(acked.stdout)["status"] == "acknowledged"
        assert "db-1 restarted" in (await cluster.tether("incident", "get", incident_id)).stdout
        kept = await cluster.tether("incident", "retention", "--days", "30")
        assert "kept 30 days" in kept.stdout
        shown_hook = await cluster.tether("webhook", "get", "am")
        assert "accepted: 2" in shown_hook.stdout
        assert hook["secret"] not in shown_hook.stdout
        rotated = await cluster.tether("--output", "json", "webhook", "rotate-secret", "am")
        assert json.loads(rotated.stdout)["secret"] not in ("", hook["secret"])
        assert "am" in (await cluster.tether("webhook", "list")).stdout
        assert (await cluster.tether("webhook", "delete", "am")).code == 0
        assert "no webhooks" in (await cluster.tether("webhook", "list")).stderr

        # a freeze over non-production refuses a task there, naming the window; an
        # override with a reason goes through
        now = time.time()
        froze = await cluster.tether(
            "freeze",
            "create",
            "quiet",
            "--start",
            str(now - 60),
            "--end",
            str(now + 3600),
            "--env-type",
            "non_production",
        )
        assert froze.code == 0, froze.stderr
        refused = await cluster.tether(
            "task", "run", "--app", "shop", "--app-env", "dev", "--", "true"
        )
        assert refused.code != 0
        assert "freeze window 'quiet'" in refused.stderr
        done = await cluster.tether(
            "task",
            "run",
            "-q",
            "--app",
            "shop",
            "--app-env",
            "dev",
            "--override-freeze",
            "incident hotfix",
            "--",
            "echo",
            "thawed",
        )
        assert done.code == 0, done.stderr
        assert "thawed" in done.stdout
        assert "quiet" in (await cluster.tether("freeze", "list")).stdout
        assert (await cluster.tether("freeze", "delete", "quiet")).code == 0
