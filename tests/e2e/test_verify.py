"""Continuous verification end to end: a real Prometheus scrapes exporters the test drives, a
real manager and delegate judge a deployment task, through the ``tether verify`` commands.

Every case shares one timeline, so the windows run concurrently: the exporters run healthy,
then (once Prometheus holds a full baseline) one's error rate jumps and another stops, a
deployment task runs, and three verifications of it follow at once. Last, Prometheus is
stopped and a fourth verification of the same deployment asks it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.e2e.harness import Cluster, Result
from tests.e2e.prometheus import Exporter, Prometheus

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
]

WINDOW_S = 12
RUN_TIMEOUT = 150.0


def _spec(prom: str, job: str, **extra: Any) -> dict[str, Any]:
    ratio = (
        f'sum(rate(app_errors_total{{job="{job}"}}[3s]))'
        f' / sum(rate(app_requests_total{{job="{job}"}}[3s])) * 100'
    )
    return {
        "provider": {"kind": "prometheus", "url": prom, "query_timeout_s": 5},
        "queries": [
            {
                "name": "error rate",
                "query": ratio,
                "bad": "up",
                "threshold": {"delta": 5},
                "unit": " %",
                "min_points": 5,
            }
        ],
        "window": {"analysis": f"{WINDOW_S}s", "baseline": "before", "step": "1s"},
        **extra,
    }


@dataclass
class Scenario:
    cluster: Cluster
    deployment: str
    runs: dict[str, Result] = field(default_factory=dict)
    gets: dict[str, Result] = field(default_factory=dict)
    prom_url: str = ""
    runbook_changes: list[float] = field(default_factory=list)


def _runbook(prom: str, exporter: Exporter) -> dict[str, Any]:
    """Deploy (the error rate jumps as it starts), verify, and roll back when it fails."""
    return {
        "name": "deploy-shop",
        "app": "shop",
        "env": "prod",
        "steps": [
            {
                "name": "deploy",
                "kind": "shell",
                "selectors": ["monitoring"],
                "script": f"{exporter.set_errors_command(6.0)}\nsleep 4\necho deployed\n",
            },
            {
                "name": "verify",
                "kind": "verify",
                "selectors": ["monitoring"],
                "spec": _spec(prom, "runbook"),
            },
        ],
        "rollback": {
            "name": "undo",
            "kind": "shell",
            "selectors": ["monitoring"],
            "script": f"{exporter.set_errors_command(0.2)}\necho rolled back\n",
        },
    }


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


async def _verify(c: Cluster, *args: str) -> Result:
    return await c.tether("verify", "run", "--selector", "monitoring", *args, timeout=RUN_TIMEOUT)


async def _until_running(c: Cluster, task_id: str) -> None:
    while True:
        got = await c.tether("task", "get", task_id, "--output", "json")
        assert got.code == 0, got.stderr
        state = json.loads(got.stdout)["state"]
        assert state in ("queued", "running"), state
        if state == "running":
            return


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scenario(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scenario]:
    root = tmp_path_factory.mktemp("verify")
    exporters = {
        "healthy": Exporter(requests_per_s=20, errors_per_s=0.2),
        "jump": Exporter(requests_per_s=20, errors_per_s=0.2),
        "stopped": Exporter(requests_per_s=20, errors_per_s=0.2),
        "runbook": Exporter(requests_per_s=20, errors_per_s=0.2),
    }
    prom = Prometheus(root / "prom", {job: e.port for job, e in exporters.items()})
    c = Cluster(root=root / "cluster")
    try:
        await prom.start()
        await c.start_manager()
        await c.start_delegate("watcher", "monitoring")
        for args in (
            ("app", "create", "shop"),
            ("env", "create", "shop", "prod", "--type", "non_production"),
        ):
            assert (await c.tether(*args)).code == 0
        book = _write(root / "runbook.yaml", _runbook(prom.url, exporters["runbook"]))
        applied_book = await c.tether("runbook", "apply", "-f", str(book))
        assert applied_book.code == 0, applied_book.stderr
        # A full baseline first: every job's ratio for a whole window, as Prometheus sees it.
        await prom.wait_for(
            f"min(count_over_time(up[{WINDOW_S + 2}s]))",
            lambda r: bool(r) and float(r[0]["value"][1]) >= WINDOW_S + 1,
            "a full baseline window",
        )
        runbook = asyncio.create_task(
            c.tether("runbook", "run", "deploy-shop", timeout=RUN_TIMEOUT)
        )
        # The deployment ends 4 s after the test has changed the exporters (it waits for
        # the file), whatever the load: the analysis window starts at its end, and rate()
        # over 3 s of a stopped series must be empty by then.
        go = root / "exporters-changed"
        deploy = await c.tether(
            "task", "submit", "--deploy-service", "shop", "--deploy-env", "prod",
            "--selector", "monitoring", "--",
            "sh", "-c", f"until [ -e {go} ]; do sleep 0.1; done; sleep 4",
        )  # fmt: skip
        assert deploy.code == 0, deploy.stderr
        task_id = deploy.last_line
        # The baseline ends when the deployment starts: the trouble begins during it.
        await _until_running(c, task_id)
        exporters["jump"].errors.set_rate(6.0)  # 1 % -> 30 %
        exporters["stopped"].stop()
        go.touch()
        followed = await c.tether("task", "logs", task_id, "--follow")
        assert followed.code == 0, followed.stderr
        s = Scenario(c, task_id, prom_url=prom.url)
        healthy = _write(root / "healthy.yaml", {"name": "healthy", **_spec(prom.url, "healthy")})
        applied = await c.tether("verify", "apply", "-f", str(healthy))
        assert applied.code == 0, applied.stderr
        s.runs["applied"] = applied
        jump = _write(root / "jump.yaml", _spec(prom.url, "jump"))
        stopped = _write(
            root / "stopped.yaml",
            _spec(prom.url, "stopped", on_inconclusive="pass_with_warning"),
        )
        results = await asyncio.gather(
            _verify(c, "--deployment", task_id, "--verification", "healthy"),
            _verify(c, "--deployment", task_id, "--spec", str(jump)),
            _verify(c, "--deployment", task_id, "--spec", str(stopped)),
        )
        s.runs.update(zip(("healthy", "jump", "stopped"), results, strict=True))
        s.runs["runbook"] = await runbook
        s.runbook_changes = exporters["runbook"].changes
        await prom.stop()
        s.runs["prom_down"] = await _verify(c, "--deployment", task_id, "--spec", str(healthy))
        for name, res in s.runs.items():
            if name in ("applied", "runbook"):
                continue
            task_line = next(
                line for line in res.stderr.splitlines() if "verification task" in line
            )
            verify_id = task_line.split("verification task ", 1)[1].split()[0]
            s.gets[name] = await c.tether("verify", "get", verify_id)
            s.gets[name + ".json"] = await c.tether("verify", "get", verify_id, "--output", "json")
        yield s
    finally:
        for e in exporters.values():
            e.stop()
        await prom.stop()
        await c.close()


def _task(s: Scenario, name: str) -> dict[str, Any]:
    res = s.gets[name + ".json"]
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _report(s: Scenario, name: str) -> dict[str, Any]:
    return json.loads(_task(s, name)["outputs"]["report"])  # type: ignore[no-any-return]


async def test_a_healthy_window_passes(scenario: Scenario) -> None:
    run = scenario.runs["healthy"]
    assert run.code == 0, run.stdout + run.stderr
    assert "verdict: passed" in run.stdout
    report = _report(scenario, "healthy")
    (q,) = report["queries"]
    assert q["outcome"] == "passed"
    assert q["after_points"] >= 5
    assert q["baseline_points"] >= 5
    assert 0.5 < q["after"] < 2  # 1 % errors, both windows
    assert 0.5 < q["baseline"] < 2


async def test_an_error_rate_jump_fails_with_a_reason_and_charts(scenario: Scenario) -> None:
    run = scenario.runs["jump"]
    assert run.code != 0
    task = _task(scenario, "jump")
    assert task["state"] == "failed"
    assert task["outputs"]["verdict"] == "failed"
    (q,) = _report(scenario, "jump")["queries"]
    assert q["outcome"] == "failed"
    assert q["after"] > 20
    assert q["margin"] < 0
    assert "error rate median" in q["reason"]
    assert "limit +5 pp" in q["reason"]
    got = scenario.gets["jump"]
    assert got.code == 0, got.stderr
    assert "verdict: failed" in got.stdout
    before = next(line for line in got.stdout.splitlines() if line.strip().startswith("before "))
    after = next(line for line in got.stdout.splitlines() if line.strip().startswith("after "))
    # One scale for both: the baseline sits at the bottom, the jump at the top.
    assert set(before.split()[1]) <= set("▁▂")
    assert "█" in after


async def test_no_data_is_inconclusive_and_passes_with_a_warning_when_asked(
    scenario: Scenario,
) -> None:
    run = scenario.runs["stopped"]
    assert run.code == 0, run.stdout + run.stderr
    task = _task(scenario, "stopped")
    assert task["state"] == "succeeded"
    assert task["outputs"]["verdict"] == "inconclusive"
    (q,) = _report(scenario, "stopped")["queries"]
    assert q["after_points"] == 0
    assert "too few points to judge (0 point(s) after" in q["reason"]


async def test_prometheus_down_is_inconclusive_naming_the_provider_error(
    scenario: Scenario,
) -> None:
    run = scenario.runs["prom_down"]
    assert run.code != 0
    task = _task(scenario, "prom_down")
    assert task["state"] == "failed"
    expected = f"prometheus at {scenario.prom_url}: connection refused"
    assert task["outputs"]["verdict"] == "inconclusive"
    assert expected in task["error"]
    assert expected in scenario.gets["prom_down"].stdout


async def test_named_verifications_are_listed_and_versioned(scenario: Scenario) -> None:
    c = scenario.cluster
    assert scenario.runs["applied"].stdout.strip() == "healthy version 1"
    listed = await c.tether("verify", "list")
    assert listed.code == 0
    assert listed.stdout.startswith("healthy\tversion 1")
    spec = await c.tether("verify", "get-spec", "healthy")
    assert spec.code == 0
    assert "error rate" in spec.stdout
    missing = await c.tether("verify", "get-spec", "nope")
    assert missing.code == 1
    assert "no verification nope" in missing.stderr


async def test_a_failed_verify_step_fails_the_runbook_and_its_rollback_runs(
    scenario: Scenario,
) -> None:
    run = scenario.runs["runbook"]
    assert run.code != 0, run.stdout + run.stderr
    assert "rolled back" in run.stdout
    # The deployment set the error rate up, the rollback set it back: in that order.
    assert scenario.runbook_changes == [6.0, 0.2]
    runs = await scenario.cluster.tether("runbook", "runs", "--output", "json")
    assert runs.code == 0, runs.stderr
    (got,) = json.loads(runs.stdout)["runs"]
    assert got["state"] == "failed"
    assert [s["status"] for s in got["steps"]] == ["succeeded", "failed"]
    assert "verification failed: error rate median" in got["steps"][1]["reason"]
    assert got["rollback"]["status"] == "succeeded"
