"""The task path with the real commands: manager, two delegates, the tether CLI."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_asyncio

from tests.e2e.harness import BIN, Cluster, Proc

# One manager and two delegates serve every test here: starting processes is the slow part.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def two(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path_factory.mktemp("cluster"))
    try:
        await c.start_manager()
        await c.start_delegate("alpha", "zone-a")
        await c.start_delegate("beta", "zone-b")
        yield c
    finally:
        await c.close()


async def _task(c: Cluster, task_id: str) -> dict[str, object]:
    res = await c.tether("task", "get", task_id, "--output", "json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


async def test_task_runs_on_the_delegate_its_selector_names(two: Cluster) -> None:
    for selector, name in (("zone-a", "alpha"), ("zone-b", "beta")):
        res = await two.tether(
            "task", "submit", "--selector", selector, "--", "echo", f"hi {selector}"
        )
        assert res.code == 0, res.stderr
        task_id = res.last_line
        logs = await two.tether("task", "logs", task_id, "--follow")
        assert logs.stdout.strip() == f"hi {selector}"
        task = await _task(two, task_id)
        assert task["state"] == "succeeded"
        attempts = task["attempts"]
        assert isinstance(attempts, list)
        assert attempts[0]["delegate_name"] == name


async def test_task_run_streams_logs_in_order_and_returns_exit_code(two: Cluster) -> None:
    script = "for i in $(seq 1 200); do echo line-$i; done; echo oops >&2; exit 7"
    res = await two.tether("task", "run", "--selector", "zone-a", "--", "bash", "-c", script)
    assert res.code == 7
    assert res.stdout.splitlines() == [f"line-{i}" for i in range(1, 201)]
    assert "oops" in res.stderr


async def test_task_run_exits_zero_on_success(two: Cluster) -> None:
    res = await two.tether("task", "run", "--", "true")
    assert res.code == 0, res.stderr


async def test_words_after_the_separator_run_as_typed(two: Cluster) -> None:
    res = await two.tether("task", "run", "--", "bash", "-c", "echo \"$HOME\" | wc -c; echo 'a  b'")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert int(lines[0]) > 1
    assert lines[1] == "a  b"


async def test_output_variables_come_back(two: Cluster) -> None:
    res = await two.tether(
        "task",
        "submit",
        "--",
        "bash",
        "-c",
        'echo "VERSION=1.2.3" >> "$TETHER_OUTPUT"; echo "IMAGE=app:7" >> "$TETHER_OUTPUT"',
    )
    await two.tether("task", "logs", res.last_line, "--follow")
    task = await _task(two, res.last_line)
    assert task["outputs"] == {"VERSION": "1.2.3", "IMAGE": "app:7"}


async def test_timeout_kills_the_task_and_its_children(two: Cluster, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    res = await two.tether("task", "run", "--timeout", "1", "--", "bash", "-c", script, timeout=60)
    assert res.code == 124, (res.stdout, res.stderr)
    pid = int(pid_file.read_text())
    assert not _alive(pid)


async def test_cancel_stops_a_running_task(two: Cluster) -> None:
    res = await two.tether("task", "submit", "--", "bash", "-c", "echo started; sleep 300")
    task_id = res.last_line
    follower = Proc(
        "follow", [str(BIN / "tether"), "task", "logs", task_id, "--follow"], two.cli_env()
    )
    await follower.start()
    await follower.wait_stdout("^started$")
    cancel = await two.tether("task", "cancel", task_id)
    assert cancel.code == 0, cancel.stderr
    await follower.wait_exit()
    task = await _task(two, task_id)
    assert task["state"] == "cancelled"


async def test_secret_env_never_shows_in_logs_or_api(two: Cluster) -> None:
    secret = "s3cr3t-Value/with+chars"
    script = (
        'echo "plain $TOKEN"; printf %s "$TOKEN" | base64; '
        "python3 -c \"import os,urllib.parse,json; v=os.environ['TOKEN']; "
        "print(urllib.parse.quote(v, safe='')); print(json.dumps(v))\"; "
        'printf %s "$TOKEN" | while IFS= read -r -n1 ch; do printf %s "$ch"; done; echo'
    )
    res = await two.tether(
        "task", "run", "--secret-env", f"TOKEN={secret}", "--", "bash", "-c", script
    )
    assert res.code == 0, res.stderr
    forms = [
        secret,
        base64.b64encode(secret.encode()).decode(),
        quote(secret, safe=""),
        json.dumps(secret)[1:-1],
    ]
    lines = res.stdout.splitlines()
    assert len(lines) == 5, lines
    assert all("**************" in ln for ln in lines), lines
    task_id = (await two.tether("task", "list", "--output", "json")).stdout
    everything = res.stdout + res.stderr + task_id
    for proc in two.procs:
        everything += "\n".join(proc.stdout + proc.stderr)
    for form in forms:
        assert form not in everything


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()
