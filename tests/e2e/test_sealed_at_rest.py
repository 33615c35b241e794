"""Task data sealed at rest, with the real commands: after a run whose script, env value,
log lines, output and deployment carry known text, and whose log went through the
delegate's spool while the manager was down, none of that text is in any file of the
manager's data dir (the SQLite WAL included; while it runs and after it stopped), in any
table of its PostgreSQL schema (a binary COPY of each, so bytea is compared raw), or in the
delegate's data dir; and the API still gives all of it back."""

from __future__ import annotations

import io
import json
import secrets
import signal
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import asyncpg

from tests.e2e.conftest import PG
from tests.e2e.harness import Cluster
from tests.e2e.test_spool import follow_until, task_json


def found_in_files(root: Path, marks: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {m.decode()}" for m in marks if m in data]
    return hits


async def found_in_schema(database: str, marks: list[bytes]) -> tuple[list[str], int]:
    """Hits in a binary COPY of every table of the schema, and the bytes dumped."""
    schema = parse_qs(urlparse(database).query)["search_path"][0]
    conn = await asyncpg.connect(PG)
    hits, total = [], 0
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = $1 AND table_type = 'BASE TABLE'",
            schema,
        )
        for row in tables:
            buf = io.BytesIO()
            await conn.copy_from_table(
                row["table_name"], schema_name=schema, output=buf, format="binary"
            )
            dump = buf.getvalue()
            total += len(dump)
            hits += [f"{row['table_name']}: {m.decode()}" for m in marks if m in dump]
    finally:
        await conn.close()
    return hits, total


async def test_no_byte_of_a_tasks_text_is_at_rest_anywhere(
    running: Cluster, tmp_path: Path
) -> None:
    tag = secrets.token_hex(5)
    script_mark, env_mark, log_mark = f"zqs{tag}", f"zqe{tag}", f"zql{tag}"
    out_mark, art_mark = f"zqo{tag}", f"zqa{tag}"
    marks = [m.encode() for m in (script_mark, env_mark, log_mark, out_mark, art_mark)]
    gate = tmp_path / "gate"
    script = (
        f": {script_mark}; i=0; while [ ! -e {gate} ]; do i=$((i+1));"
        f' echo "{log_mark}-$i $V"; sleep 0.01; done;'
        f' echo "O={out_mark}" >> "$TETHER_OUTPUT"'
    )
    delegate = await running.start_delegate("vault")
    submitted = await running.tether(
        "task", "submit", "--timeout", "120", "--env", f"V={env_mark}",
        "--deploy-service", "web", "--deploy-env", "prod", "--deploy-artifact", art_mark,
        "--", "bash", "-c", script,
    )  # fmt: skip
    assert submitted.code == 0, submitted.stderr
    task_id = submitted.last_line
    await follow_until(running, task_id, rf"^{log_mark}-20 {env_mark}$")

    # The delegate's spool while the manager is down: lines and then the result on disk.
    assert running.manager is not None
    await running.manager.stop(signal.SIGKILL)
    await delegate.wait_event("manager unreachable; spooling the task's log", task_id=task_id)
    gate.touch()
    await delegate.wait_event("task result spooled; sent when the manager is back", task_id=task_id)
    delegate_dir = running.root / "delegate-vault"
    spooled = [p for p in (delegate_dir / "spool").rglob("*.seg")]
    assert sum(p.stat().st_size for p in spooled) > 0
    assert found_in_files(delegate_dir, marks) == []

    seen = len(delegate.events())
    await running.start_manager(port=running.port)
    await delegate.wait_event("spooled result delivered", after=seen, task_id=task_id)

    # Everything reads back through the API.
    task = await task_json(running, task_id)
    assert task["state"] == "succeeded"
    assert script_mark in task["payload"]["script"]
    assert task["payload"]["env"] == {"V": env_mark}
    assert task["outputs"] == {"O": out_mark}
    assert task["deployment"]["artifact"] == art_mark
    logs = await running.tether("task", "logs", task_id, "--output", "json")
    texts = [json.loads(line)["text"] for line in logs.stdout.splitlines()]
    assert f"{log_mark}-1 {env_mark}" in texts
    listed = await running.tether("task", "list", "--output", "json")
    assert task_id in listed.stdout

    # At rest: the data dir while the manager runs (WAL and all), the database, and after.
    assert found_in_files(running.data_dir, marks) == []
    if running.database is not None:
        hits, dumped = await found_in_schema(running.database, marks)
        assert dumped > 0
        assert hits == []
    else:
        assert (running.data_dir / "tether.db-wal").exists()
    assert found_in_files(delegate_dir, marks) == []
    await running.manager.stop()
    assert found_in_files(running.data_dir, marks) == []
