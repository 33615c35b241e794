"""Restarts, revocation, and what the delegate exposes on its host."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import tarfile
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import ON_SQLITE
from tests.e2e.harness import BIN, Cluster, Proc

EXIT_AUTH = 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_delegate_reconnects_after_a_manager_restart(running: Cluster, sig: int) -> None:
    delegate = await running.start_delegate("steady")
    assert (await running.tether("task", "run", "--", "echo", "before")).code == 0
    seen = len(delegate.events())
    await running.restart_manager(sig)
    await delegate.wait_event("channel mode", mode="stream", after=seen)
    res = await running.tether("task", "run", "--", "echo", "after")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "after"


async def test_revoking_a_token_through_the_api_stops_its_delegate(running: Cluster) -> None:
    delegate = await running.start_delegate("doomed")
    res = await running.tether("token", "revoke", "doomed")
    assert res.code == 0, res.stderr
    assert await delegate.wait_exit() == EXIT_AUTH
    assert any("revoked" in str(e.get("reason", "")) for e in delegate.events())


async def test_revoking_a_token_on_the_host_stops_its_delegate(running: Cluster) -> None:
    delegate = await running.start_delegate("doomed")
    res = await running.run(
        str(BIN / "tether-manager"),
        "token",
        "revoke",
        "doomed",
        "--data-dir",
        str(running.data_dir),
        *running.store_args(),
    )
    assert res.code == 0, res.stderr
    assert await delegate.wait_exit() == EXIT_AUTH


@ON_SQLITE
async def test_an_unknown_token_stops_the_delegate_with_a_clear_message(running: Cluster) -> None:
    delegate = await running.start_delegate(
        "stranger", token="tdt_not-a-real-token", wait_mode=None
    )
    assert await delegate.wait_exit() == EXIT_AUTH
    assert any("not known" in str(e.get("reason", "")) for e in delegate.events())


@ON_SQLITE
async def test_delegate_holds_no_listening_socket(running: Cluster) -> None:
    delegate = await running.start_delegate("quiet")
    assert (await running.tether("task", "run", "--", "echo", "busy")).code == 0
    proc = psutil.Process(delegate.pid)
    conns = proc.net_connections(kind="all")
    assert conns, "expected at least the connection to the manager"
    assert not [c for c in conns if c.status == psutil.CONN_LISTEN]
    assert all(
        c.raddr for c in conns if c.type == socket.SOCK_STREAM and c.family != socket.AF_UNIX
    )


@ON_SQLITE
async def test_manager_refuses_tls_1_2(running: Cluster) -> None:
    ctx = ssl.create_default_context(cafile=str(running.ca_file))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


@ON_SQLITE
async def test_manager_accepts_tls_1_3(running: Cluster) -> None:
    ctx = ssl.create_default_context(cafile=str(running.ca_file))
    with (
        socket.create_connection(("127.0.0.1", running.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.3"


async def _task_state(c: Cluster, task_id: str) -> str:
    res = await c.tether("task", "get", task_id, "--output", "json")
    return str(json.loads(res.stdout)["state"])


@ON_SQLITE
async def test_sigterm_lets_a_running_task_finish(running: Cluster) -> None:
    delegate = await running.start_delegate("graceful")
    res = await running.tether(
        "task", "submit", "--", "bash", "-c", "echo begin; sleep 0.5; echo end"
    )
    task_id = res.last_line
    await delegate.wait_event("task started", task_id=task_id)
    assert await delegate.stop(signal.SIGTERM) == 0
    assert await _task_state(running, task_id) == "succeeded"
    logs = await running.tether("task", "logs", task_id)
    assert logs.stdout.split() == ["begin", "end"]


@ON_SQLITE
async def test_sigterm_cancels_tasks_still_running_after_the_grace(running: Cluster) -> None:
    delegate = await running.start_delegate("impatient")
    task_id = (await running.tether("task", "submit", "--", "sleep", "300")).last_line
    await delegate.wait_event("task started", task_id=task_id)
    assert await delegate.stop(signal.SIGTERM) == 0
    assert await _task_state(running, task_id) == "cancelled"


@ON_SQLITE
async def test_a_second_sigterm_cancels_at_once(running: Cluster) -> None:
    # Real timings on the delegate: a 30 s grace that only the second signal cuts short.
    delegate = await running.start_delegate("forced", extra=("--time-scale", "1"))
    task_id = (await running.tether("task", "submit", "--", "sleep", "300")).last_line
    await delegate.wait_event("task started", task_id=task_id)
    assert delegate.proc is not None
    delegate.proc.send_signal(signal.SIGTERM)
    await delegate.wait_event("stopping: finishing running tasks")
    delegate.proc.send_signal(signal.SIGTERM)
    assert await delegate.wait_exit(timeout=15) == 0
    assert await _task_state(running, task_id) == "cancelled"


@pytest.mark.sqlite_only
async def test_backup_while_running_restores_into_a_working_manager(
    running: Cluster, tmp_path: Path
) -> None:
    await running.start_delegate("saver")
    done = await running.tether("task", "run", "--", "echo", "kept")
    assert done.code == 0
    archive = tmp_path / "backup.tar.gz"
    res = await running.run(
        str(BIN / "tether-manager"),
        "backup",
        "--data-dir",
        str(running.data_dir),
        "--output",
        str(archive),
    )
    assert res.code == 0, res.stderr
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        assert {"tether.db", "master.key", "admin-api-key", "tls"} <= set(tar.getnames())
        restored = tmp_path / "restored"
        tar.extractall(restored, filter="data")
    # A second manager on the restored data dir answers with the same key and sees the task.
    other = Cluster(root=tmp_path / "other")
    other.data_dir = restored
    try:
        proc = Proc(
            "restored",
            [
                str(BIN / "tether-manager"),
                "serve",
                "--data-dir",
                str(restored),
                "--listen",
                "127.0.0.1:0",
            ],
        )
        await proc.start()
        other.procs.append(proc)
        other.url = (await proc.wait_stdout(r"listening on (https://\S+)")).group(1)
        listed = await other.tether("task", "list", "--output", "json")
        assert listed.code == 0, listed.stderr
        assert [t["state"] for t in json.loads(listed.stdout)["tasks"]] == ["succeeded"]
    finally:
        await other.close()


@ON_SQLITE
async def test_a_profile_runs_when_a_delegate_starts_and_again_when_it_changes(
    running: Cluster, tmp_path: Path
) -> None:
    script = tmp_path / "setup.sh"
    script.write_text('echo "profile v1 on $(hostname)"\n')
    res = await running.tether(
        "profile", "set", "setup", "--selector", "web", "--script-file", str(script)
    )
    assert res.code == 0, res.stderr
    delegate = await running.start_delegate("web-1", "web")
    started = await delegate.wait_event("task finished", status="succeeded")
    logs = await running.tether("task", "logs", started["task_id"])
    assert logs.stdout.startswith("profile v1 on ")
    script.write_text('echo "profile v2"\n')
    seen = len(delegate.events())
    res = await running.tether(
        "profile", "set", "setup", "--selector", "web", "--script-file", str(script)
    )
    assert "started on 1 delegate" in res.stdout
    again = await delegate.wait_event("task finished", status="succeeded", after=seen)
    assert (await running.tether("task", "logs", again["task_id"])).stdout.strip() == "profile v2"


@ON_SQLITE
async def test_a_delegate_started_before_its_manager_waits_for_it(running: Cluster) -> None:
    token = await running.token("early")
    assert running.manager is not None
    await running.manager.stop(signal.SIGTERM)
    delegate = await running.start_delegate("early", token=token, wait_mode=None)
    await delegate.wait_event("cannot register yet")
    await running.start_manager(port=running.port)
    await delegate.wait_event("channel mode", mode="stream")
    res = await running.tether("task", "run", "--selector", "early", "--", "echo", "late start")
    assert res.stdout.strip() == "late start"


@ON_SQLITE
async def test_a_drained_delegate_finishes_its_task_takes_no_new_one_until_resumed(
    running: Cluster,
) -> None:
    delegate = await running.start_delegate("drainee", "pool")
    long = (
        await running.tether(
            "task", "submit", "--selector", "pool", "--", "bash", "-c", "echo on; sleep 1; echo off"
        )
    ).last_line
    await delegate.wait_event("task started", task_id=long)
    assert (await running.tether("delegate", "drain", "drainee")).code == 0
    await delegate.wait_event("draining: no new tasks")
    queued = (
        await running.tether("task", "submit", "--selector", "pool", "--", "echo", "later")
    ).last_line
    await delegate.wait_event("task finished", task_id=long, status="succeeded")
    state = json.loads((await running.tether("task", "get", queued, "--output", "json")).stdout)[
        "state"
    ]
    assert state == "queued"
    assert (await running.tether("delegate", "resume", "drainee")).code == 0
    await delegate.wait_event("task finished", task_id=queued, status="succeeded")
