"""Data at rest with the real commands: every file the manager and a delegate keep is 0600
in 0700 directories, after a start, a task and a backup; wrong modes are repaired (and
said) or refused (exit 2, one line)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from tests.e2e.harness import BIN, Cluster, Proc


def loose(root: Path, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Every entry under ``root`` (itself included) that group or others may use, or that
    is not 0700 (directory) / 0600-or-stricter (file)."""
    found = []
    for path in [root, *root.rglob("*")]:
        if any(path.is_relative_to(root / s) and path != root / s for s in skip):
            continue
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if (stat.S_ISDIR(st.st_mode) and mode != 0o700) or mode & 0o077:
            found.append(f"{path.relative_to(root)} {mode:04o}")
    return found


async def test_manager_and_delegate_keep_everything_private_and_so_does_a_backup(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_manager()
    await cluster.start_delegate("keeper")
    done = await cluster.tether("task", "run", "--", "echo", "kept")
    assert done.code == 0, done.stderr
    data = cluster.data_dir
    # The store, with its WAL and SHM while it runs, keys, TLS, the admin key.
    names = {p.name for p in data.rglob("*")}
    assert {"tether.db", "tether.db-wal", "tether.db-shm", "master.key", "admin-api-key"} <= names
    assert {"ca-key.pem", "server-key.pem"} <= names
    assert loose(data) == []
    # The delegate's key, spool and task scratch space (whose contents are the tasks' own).
    delegate_dir = cluster.root / "delegate-keeper"
    assert (delegate_dir / "delegate.key").exists()
    assert loose(delegate_dir, skip=("work",)) == []
    assert cluster.manager is not None
    checked = [e for e in cluster.manager.events() if e.get("event", "").startswith("data dir")]
    assert [e["event"] for e in checked] == ["data dir modes checked: private to this user"]

    archive = tmp_path / "backups" / "b.tar.gz"
    res = await cluster.run(
        str(BIN / "tether-manager"), "backup", "--data-dir", str(data), "--output", str(archive)
    )
    assert res.code == 0, res.stderr
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert stat.S_IMODE(archive.parent.stat().st_mode) == 0o700
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert {m.name for m in members} >= {"tether.db", "master.key", "tls/server-key.pem"}
    assert [m.name for m in members if m.mode != (0o700 if m.isdir() else 0o600)] == []
    assert loose(data) == []


async def test_wrong_modes_are_repaired_and_a_key_readable_by_others_is_refused(
    cluster: Cluster,
) -> None:
    await cluster.start_manager()
    assert cluster.manager is not None
    await cluster.manager.stop()
    data = cluster.data_dir
    # As a copy made by hand leaves it: a world-readable directory and store.
    os.chmod(data, 0o755)
    os.chmod(data / "tether.db", 0o644)
    os.chmod(data / "tls" / "ca.pem", 0o644)

    proc = await cluster.start_manager()

    repaired = await proc.wait_event("data dir modes repaired: group or others could read these")
    assert sorted(repaired["repaired"]) == sorted(
        [
            f"{data} 0755->0700",
            f"{data / 'tether.db'} 0644->0600",
            f"{data / 'tls' / 'ca.pem'} 0644->0600",
        ]
    )
    assert loose(data) == []
    await proc.stop()

    os.chmod(data / "master.key", 0o644)
    refused = Proc(
        "refused",
        [str(BIN / "tether-manager"), "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
    )
    await refused.start()
    assert await refused.wait_exit() == 2
    assert refused.stderr == [
        f"error: {data / 'master.key'} is mode 0644: a key readable by group or others may"
        f" have leaked; rotate it, or run `chmod 600 {data / 'master.key'}` once you know it"
        " did not"
    ]
    # Refused, not changed: the operator decides.
    assert stat.S_IMODE((data / "master.key").stat().st_mode) == 0o644


async def test_a_delegate_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    data = tmp_path / "delegate"
    data.mkdir(mode=0o700)
    key = data / "delegate.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o640)
    proc = Proc(
        "delegate",
        [
            str(BIN / "tether-delegate"),
            "run",
            "--manager-url",
            "https://127.0.0.1:9",
            "--data-dir",
            str(data),
            "--name",
            "d1",
            # Tasks' users are another check (tests/e2e/test_isolation.py); this is the key's.
            "--shared-user",
        ],
        env={"TETHER_TOKEN": "tdt_not-used"},
    )
    await proc.start()
    assert await proc.wait_exit() == 2
    assert proc.stderr[-1] == (
        f"error: {key} is mode 0640: a key readable by group or others may have leaked;"
        f" rotate it, or run `chmod 600 {key}` once you know it did not"
    )
