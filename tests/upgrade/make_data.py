"""Make tests/upgrade/data/TAG/ with the code of release TAG itself (run by hand, once per
release; the result is committed):

    .venv/bin/python -m tests.upgrade.make_data v0.1.0

The tag is checked out into a temporary git worktree and its commands are run from there (on
this venv's packages: the tag's own sources come first on sys.path). The real manager and
delegate of that release make the data over loopback:

- ``sqlite/``: the manager's data dir (SQLite, master keys, TLS), a delegate data dir whose
  spool holds a finished task's log and result that the manager, stopped, never got, and
  the delegate's token;
- ``postgres/``: the manager's data dir (keys) and ``dump.sql``, a plain pg_dump of its
  schema, with the schema's name replaced by ``@SCHEMA@``.

Both hold: a user invited, a builtin secret, tasks with logs (one reading the secret), and
the audit events all of that wrote. ``facts.json`` says what the test should find.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.e2e.harness import WAIT, Proc

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
PG_URL = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA_PLACEHOLDER = "@SCHEMA@"
# Made up for this data set, and public with it: it only shows that secrets still decrypt.
SECRET_NAME = "db-password"
SECRET_VALUE = "upgrade-fixture-Kx9-not-a-real-secret"
EMAIL = "alice@example.com"
# The spooled task waits for this file, so the manager can be stopped before it ends.
SPOOLED_CMD = (
    "echo before-outage; while [ ! -e {go} ]; do sleep 0.05; done; echo after-outage; exit 3"
)
SECRET_CMD = 'echo "hello from the old release"; printf %s "$PW" | sha256sum'
ENTRY = {
    "tether-manager": "manager.cli",
    "tether-delegate": "delegate.cli",
    "tether": "manager.tether_cli",
}


def _shims(src: Path, bin_dir: Path) -> None:
    """One script per command, running the tag's sources ahead of anything installed."""
    bin_dir.mkdir()
    for name, module in ENTRY.items():
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(src)!r})\n"
            f"from {module} import main\nsys.exit(main())\n"
        )
        path.chmod(0o755)


class Old:
    """The old release's commands on one data set."""

    def __init__(self, bin_dir: Path, root: Path, database: str | None) -> None:
        self.bin = bin_dir
        self.root = root
        self.data_dir = root / "manager"
        self.database = database
        self.url = ""
        self.manager: Proc | None = None

    def _store(self) -> list[str]:
        return ["--database", self.database] if self.database else []

    async def start_manager(self) -> None:
        argv = [str(self.bin / "tether-manager"), "serve", "--data-dir", str(self.data_dir)]
        argv += ["--listen", "127.0.0.1:0", "--log-format", "json", *self._store()]
        self.manager = await Proc("manager", argv).start()
        self.url = (await self.manager.wait_stdout(r"listening on (https://\S+)")).group(1)

    def run(self, *argv: str, env: dict[str, str] | None = None) -> str:
        base = {
            "TETHER_MANAGER_URL": self.url,
            "TETHER_CA_FILE": str(self.data_dir / "tls" / "ca.pem"),
            "TETHER_API_KEY": (self.data_dir / "admin-api-key").read_text().strip(),
        }
        done = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            env={**os.environ, **base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def tether_json(self, *argv: str) -> Any:
        # Options go after the subcommand, before the task's own "--" argv. `task run` prints
        # the task and its log lines, a JSON object a line: the task comes with the "end".
        out = self.run("tether", *argv[:2], "--output", "json", *argv[2:])
        try:
            objects = [json.loads(out)]
        except ValueError:
            objects = [json.loads(line) for line in out.splitlines() if line.strip()]
        tasks = [o.get("task", o) for o in objects if o.get("kind", "end") == "end"]
        if not tasks:
            raise RuntimeError(f"{argv}: no task in {out!r}")
        return tasks[-1]

    async def start_delegate(self, name: str, token: str) -> Proc:
        argv = [str(self.bin / "tether-delegate"), "run", "--manager-url", self.url]
        argv += ["--ca-file", str(self.data_dir / "tls" / "ca.pem"), "--name", name]
        argv += ["--data-dir", str(self.root / f"delegate-{name}"), "--selector", "upgrade"]
        argv += ["--log-format", "json"]
        proc = Proc(name, argv, env={"TETHER_TOKEN": token})
        await proc.start()
        await proc.wait_event("channel mode")
        return proc


async def _make(old: Old, *, spool: bool) -> dict[str, Any]:
    await old.start_manager()
    facts: dict[str, Any] = {"secret_sha256": _sha(SECRET_VALUE), "email": EMAIL}
    old.run("tether", "user", "create", EMAIL, "--name", "Alice")
    old.run("tether", "secret", "create", SECRET_NAME, "--from-literal", SECRET_VALUE)
    token = (
        old.run(
            "tether-manager",
            "token",
            "create",
            "d1",
            "--data-dir",
            str(old.data_dir),
            *old._store(),
        )
        .strip()
        .splitlines()[-1]
    )
    go = old.root / "go"
    delegate = await old.start_delegate("d1", token)
    env_arg = f'PW=${{secrets.getValue("{SECRET_NAME}")}}'
    task = old.tether_json(
        "task", "run", "--selector", "upgrade", "--env", env_arg, "--", "sh", "-c", SECRET_CMD
    )
    facts["secret_task"] = task["id"]
    if spool:
        submitted = old.tether_json(
            "task", "submit", "--selector", "upgrade", "--", "sh", "-c", SPOOLED_CMD.format(go=go)
        )
        facts["spooled_task"] = submitted["id"]
        await delegate.wait_until(
            lambda: "before-outage" in old.run("tether", "task", "logs", submitted["id"]),
            "the spooled task's first line",
        )
        assert old.manager is not None
        await old.manager.stop(signal.SIGTERM)
        go.touch()
        await delegate.wait_event("task result spooled; sent when the manager is back")
        facts["token"] = token
    await delegate.stop(signal.SIGTERM)
    if old.manager is not None and old.manager.proc and old.manager.proc.returncode is None:
        await old.manager.stop(signal.SIGTERM)
    return facts


def _sha(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*-wal", "*-shm", "go"))


async def main(tag: str) -> None:
    out = DATA / tag
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix=f"tether-{tag}-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        subprocess.run(["git", "worktree", "add", "--detach", str(src), tag], cwd=REPO, check=True)
        try:
            _shims(src, tmp / "bin")
            # SQLite, with a delegate spool.
            lite = Old(tmp / "bin", tmp / "sqlite", None)
            facts = await _make(lite, spool=True)
            conn = sqlite3.connect(lite.data_dir / "tether.db")
            facts["schema_version"] = conn.execute(
                "SELECT MAX(version) FROM schema_version"
            ).fetchone()[0]
            conn.close()
            _copy_tree(lite.data_dir, out / "sqlite" / "manager")
            _copy_tree(lite.root / "delegate-d1", out / "sqlite" / "delegate-d1")
            # PostgreSQL: a schema of its own, dumped, then dropped.
            schema = f"upgrade_{secrets.token_hex(4)}"
            subprocess.run(["psql", PG_URL, "-qc", f"CREATE SCHEMA {schema}"], check=True)
            try:
                pg = Old(tmp / "bin", tmp / "postgres", f"{PG_URL}?search_path={schema}")
                pg_facts = await _make(pg, spool=False)
                pg_facts["schema_version"] = int(
                    subprocess.run(
                        [
                            "psql",
                            PG_URL,
                            "-tAc",
                            f"SELECT max(version) FROM {schema}.schema_version",
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
                dump = subprocess.run(
                    ["pg_dump", "--no-owner", "--no-privileges", "--schema", schema, PG_URL],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            finally:
                subprocess.run(["psql", PG_URL, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=True)
            _copy_tree(pg.data_dir, out / "postgres" / "manager")
            (out / "postgres" / "dump.sql").write_text(dump.replace(schema, SCHEMA_PLACEHOLDER))
            facts["postgres"] = pg_facts
            (out / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(src)], cwd=REPO, check=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "v0.1.0"))
