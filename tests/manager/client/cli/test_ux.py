"""The everyday `tether`: names and prefixes for tasks, labels, deployments by app/env,
timestamps and tails of logs, YAML, contexts and completion (a test double of the client)."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from manager.client import ApiError
from manager.client.cli.output import ago, summary_line, task_details
from manager.schemas.tasks import DelegateView, LogEntry, LogPage, TaskView
from shared.protocol import TaskState
from tests.manager.client.cli.test_main import FakeClient, submit_of, task_view, tether


class Tasks(FakeClient):
    """Tasks found by id only in full; prefixes and names through the list's filters."""

    def __init__(self, tasks: list[TaskView], **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.tasks = tasks
        self.queries: list[dict[str, object]] = []
        self.delegates: list[DelegateView] = []

    async def get_task(self, task_id: str) -> TaskView:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise ApiError(404, "not_found", f"no task {task_id}")

    async def list_tasks(self, *args: object, **kw: object) -> list[TaskView]:
        self.queries.append(kw)
        prefix, name = kw.get("id_prefix"), kw.get("name")
        labels: Mapping[str, str] = kw.get("labels") or {}  # type: ignore[assignment]
        return [
            t
            for t in self.tasks
            if (prefix is None or t.id.startswith(str(prefix)))
            and (name is None or t.name == name)
            and all(t.labels.get(k) == v for k, v in labels.items())
        ]

    async def cancel_task(self, task_id: str) -> TaskView:
        self.cancelled.append(task_id)
        return await self.get_task(task_id)

    async def list_delegates(self) -> list[DelegateView]:
        return self.delegates


TASKS = [
    task_view(id="task_01abc", name="nightly"),
    task_view(id="task_01abd", name="deploy-web", created_at=1_700_000_100.0),
    task_view(id="task_02xyz", name="deploy-web", created_at=1_700_000_200.0),
]


def test_a_unique_prefix_or_name_finds_the_task() -> None:
    client = Tasks(TASKS)
    assert tether("task", "get", "task_02", client=client).out.startswith("id:")
    assert "task_02xyz" in tether("task", "get", "task_02", client=client).out
    assert "task_01abc" in tether("task", "get", "nightly", client=client).out
    assert tether("task", "cancel", "task_01abc", client=client).code == 0
    assert client.cancelled == ["task_01abc"]


def test_an_ambiguous_prefix_or_name_lists_the_candidates_and_exits_2() -> None:
    client = Tasks(TASKS)
    res = tether("task", "logs", "task_01", client=client)
    assert res.code == 2
    assert res.err.startswith("error: 'task_01' matches several tasks: task_01abc (nightly, ")
    assert "task_01abd (deploy-web, " in res.err
    assert len(res.err.splitlines()) == 1
    assert tether("task", "get", "deploy-web", client=client).code == 2


def test_nothing_matching_is_the_managers_404() -> None:
    res = tether("task", "get", "task_09", client=Tasks(TASKS))
    assert (res.code, res.err) == (1, "error: HTTP 404 not_found: no task task_09\n")


def test_run_takes_a_name_and_labels_and_list_filters_by_them() -> None:
    sent = submit_of("--name", "nightly", "--label", "team=web", "--label", "tier=1", "--", "true")
    assert (sent.name, sent.labels) == ("nightly", {"team": "web", "tier": "1"})
    client = Tasks(TASKS)
    res = tether("task", "list", "--name", "nightly", "--label", "team=web", client=client)
    assert res.code == 0
    assert client.queries[-1]["name"] == "nightly"
    assert client.queries[-1]["labels"] == {"team": "web"}
    bad = tether("task", "run", "--label", "nolabel", "--", "true")
    assert (bad.code, bad.err) == (2, "error: --label expects KEY=VALUE; 'nolabel' has no '='\n")


def test_a_service_deployed_to_an_app_env_is_a_deployment_there() -> None:
    sent = submit_of(
        "--app", "checkout", "--app-env", "staging", "--deploy-service", "web", "--", "true"
    )
    assert sent.deployment is not None
    assert (sent.deployment.service, sent.deployment.environment) == ("web", "staging")
    res = tether(
        "task", "run", "--app", "checkout", "--app-env", "staging",
        "--deploy-service", "web", "--deploy-env", "other", "--", "true",
    )  # fmt: skip
    assert res.code == 2
    assert res.err == (
        "error: --deploy-env other differs from --app-env staging: a task for an environment"
        " deploys there (leave out --deploy-env)\n"
    )


def test_run_warns_when_no_connected_delegate_matches() -> None:
    client = Tasks([task_view(selectors=["gpu"])])
    client.task = task_view(selectors=["gpu"])
    res = tether("task", "submit", "--selector", "gpu", "--", "true", client=client)
    assert "warning" not in res.err  # submit returns at once: no hint needed
    client.events = []
    res = tether("task", "run", "-q", "--selector", "gpu", "--", "true", client=client)
    assert "warning" not in res.err  # quiet
    res = tether("task", "run", "--selector", "gpu", "--", "true", client=client)
    assert "[tether] warning: no connected delegate matches gpu (0 connected);" in res.err


def test_timed_out_and_cancelled_say_so_once() -> None:
    timed = task_view(TaskState.TIMED_OUT, timeout_s=2, error="timed out after 2 s")
    assert summary_line(timed) == "task task_1 timed out after 2s"
    cancelled = task_view(TaskState.CANCELLED, exit_code=-15)
    assert "exit code:   cancelled" in task_details(cancelled)
    assert "-15" not in task_details(cancelled)
    killed = task_view(TaskState.FAILED, exit_code=-9)
    assert summary_line(killed) == "task task_1 failed with exit code SIGKILL"


def test_ago_is_short_and_relative() -> None:
    assert [ago(1000 - d, now=1000) for d in (0, 42, 180, 7200, 3 * 86400)] == [
        "just now", "42s ago", "3m ago", "2h ago", "3d ago"
    ]  # fmt: skip
    assert ago(1000 + 120, now=1000) == "in 2m"
    assert ago(None) == "-"


def test_logs_timestamps_and_tail() -> None:
    lines = [
        LogEntry(attempt=1, seq=n, stream="stdout", ts=1_700_000_000 + n, text=f"line {n}")
        for n in range(5)
    ]
    page = LogPage(lines=lines, cursor="1:4", state=TaskState.SUCCEEDED)
    client = Tasks([task_view()], pages=[page])
    res = tether("task", "logs", "task_1", "--tail", "2", "--timestamps", client=client)
    assert res.out.splitlines() == [
        "2023-11-14T22:13:23.000Z line 3",
        "2023-11-14T22:13:24.000Z line 4",
    ]


def test_yaml_output_has_rfc3339_times() -> None:
    res = tether("--output", "yaml", "task", "get", "task_1", client=Tasks([task_view()]))
    data = yaml.safe_load(res.out)
    assert data["id"] == "task_1"
    assert data["created_at"] == "2023-11-14T22:13:20.000Z"


def test_contexts_add_use_list_remove(tmp_path: Path) -> None:
    env = {"TETHER_CONFIG_DIR": str(tmp_path / "cfg")}
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    assert (
        tether("context", "add", "prod", "https://prod:8443", "--ca-file", str(ca), env=env).code
        == 0
    )
    assert tether("context", "add", "dev", "https://dev:8443", env=env).code == 0
    config = tmp_path / "cfg" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    listed = tether("context", "list", env=env).out.splitlines()
    assert listed[0].split() == ["CURRENT", "NAME", "URL", "CA", "FILE", "SESSION"]
    assert listed[2].split()[:2] == ["*", "prod"]  # the first one added is current
    # An API key still needs no login; the context gives the URL and CA.
    res = tether("task", "list", env={**env, "TETHER_API_KEY": "k"})
    assert res.config is not None
    assert (res.config.manager_url, res.config.ca_file) == ("https://prod:8443", ca.resolve())
    assert tether("context", "use", "dev", env=env).code == 0
    # An explicit context never gets the environment's key (it may be another manager's).
    res = tether("--context", "prod", "task", "list", env={**env, "TETHER_API_KEY": "k"})
    assert res.code == 2
    assert "not logged in to https://prod:8443 (from context 'prod')" in res.err
    res = tether("--context", "prod", "--api-key", "k", "task", "list", env=env)
    assert res.config is not None
    assert res.config.manager_url == "https://prod:8443"
    res = tether("task", "list", env={**env, "TETHER_API_KEY": "k"})
    assert res.config is not None
    assert res.config.manager_url == "https://dev:8443"
    assert tether("context", "remove", "dev", env=env).code == 0
    data = json.loads(config.read_text())
    assert (data["current"], sorted(data["contexts"])) == (None, ["prod"])
    res = tether("context", "use", "gone", env=env)
    assert (res.code, res.err) == (2, "error: no context 'gone' (contexts: prod)\n")


def test_login_may_name_a_new_context_with_its_url(tmp_path: Path) -> None:
    env = {"TETHER_CONFIG_DIR": str(tmp_path / "cfg")}
    res = tether("--context", "new", "--manager-url", "https://new:1", "logout", env=env)
    assert res.code == 0, res.err
    assert res.config is not None
    assert (res.config.context, res.config.manager_url) == ("new", "https://new:1")
    res = tether("--context", "new", "logout", env=env)  # without a URL: it must exist
    assert (res.code, res.err) == (2, "error: no context 'new' (contexts: none yet: "
                                      "tether context add NAME URL)\n")  # fmt: skip


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_is_generated_for_each_shell(shell: str) -> None:
    res = tether("completion", shell, env={})
    assert res.code == 0, res.err
    assert "tether" in res.out
    assert "deployments" in res.out
    assert "context" in res.out


def test_an_unexpected_error_is_one_line_without_debug() -> None:
    class Broken(FakeClient):
        async def get_task(self, task_id: str) -> TaskView:
            raise RuntimeError("bug")

    res = tether("task", "get", "task_1", client=Broken())
    assert (res.code, res.err) == (
        70,
        "error: internal error (RuntimeError); run again with --debug for the traceback\n",
    )
    res = tether("--debug", "task", "get", "task_1", client=Broken())
    assert res.code == 70
    assert "Traceback (most recent call last)" in res.err
