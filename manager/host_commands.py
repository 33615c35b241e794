"""Host-side commands of issue 19 (``tether-manager keys rotate-oidc``, ``tether-manager
purge``): they work on the data dir and the store, like the others in manager.cli, and
record their change in the audit trail as the system's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from manager.audit.recorder import AuditRecorder, Change
from manager.core.identity import SYSTEM
from manager.keys.audit_key import AuditKeys
from manager.keys.masterkey import MasterKey
from manager.keys.oidc_keys import RETIRED_KEPT_S, OidcKeys
from manager.retention.purge import Purger
from manager.store.base import Store
from manager.store.factory import open_store

__all__ = ["add_host_parsers", "purge", "rotate_oidc"]

_PROG = "tether-manager"


def add_host_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    keys: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    keys.add_parser(
        "rotate-oidc",
        parents=[common],
        help="a new signing key for task tokens; the old one stays published an hour",
    )
    p = sub.add_parser(
        "purge", parents=[common], help="delete what the retention settings let go, once"
    )
    p.add_argument("--dry-run", action="store_true", help="only count what would go")


async def _record(store: Store, key: MasterKey, command: str, change: Change, kind: str) -> None:
    await AuditRecorder(store, AuditKeys(key)).write(
        SYSTEM, change, resource_type=kind, method="CLI", path=command, client_ip="local"
    )


async def rotate_oidc(data_dir: Path, database: str | None, key: MasterKey) -> int:
    store = open_store(data_dir, database)
    await store.open()
    try:
        rotated = await OidcKeys(store, key).rotate()
        await _record(
            store,
            key,
            f"{_PROG} keys rotate-oidc",
            Change(
                rotated.current,
                rotated.current,
                "rotate",
                f"rotated the task-token signing key to {rotated.current}",
                after={
                    "current": rotated.current,
                    "published": rotated.published,
                    "dropped": rotated.dropped,
                },
            ),
            "oidc_key",
        )
    finally:
        await store.close()
    print(f"Rotated: {rotated.current} signs task tokens from now on.")
    print(
        f"Published: {', '.join(rotated.published)} (a retired key stays {RETIRED_KEPT_S // 60}"
        " minutes, so tokens signed before keep verifying until they expire)."
    )
    if rotated.dropped:
        print(f"No longer published: {', '.join(rotated.dropped)}.", file=sys.stdout)
    return 0


async def purge(data_dir: Path, database: str | None, *, dry_run: bool) -> int:
    """One purge by the retention settings (what the manager runs in the background)."""
    master = data_dir / "master.key"
    if not master.exists():
        print(f"error: no master key in {data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    if database is None and not (data_dir / "tether.db").exists():
        print(f"error: no manager data in {data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    key = MasterKey.load(master)
    keys = AuditKeys(key)
    store = open_store(data_dir, database)
    await store.open()
    try:

        async def purged(counts: dict[str, int]) -> None:
            summary = ", ".join(f"{n} {kind}" for kind, n in counts.items())
            await _record(
                store,
                key,
                f"{_PROG} purge",
                Change("retention", "retention", "purge", f"purged {summary}", after=counts),
                "retention",
            )

        run = await Purger(store, keys.current, purged).run(dry_run=dry_run)
    finally:
        await store.close()
    verb = "Would delete" if dry_run else "Deleted"
    print(f"{verb}:")
    labels = {
        "tasks": "finished tasks (with their logs)",
        "logs": "finished tasks' logs (the tasks kept)",
        "audit": "audit events (behind a signed checkpoint)",
    }
    for kind, n in run.counts.items():
        print(f"  {kind:6} {n:8}  {labels.get(kind, '')}".rstrip())
    if not any(run.counts.values()):
        print("Nothing: no retention is set, or nothing is old enough (tether retention get).")
    return 0
