"""A verification spec and a finished deployment task, for the manager's verification tests."""

from __future__ import annotations

from typing import Any

from manager.records import TaskRecord
from manager.store.base import Store
from shared.ids import new_id
from shared.protocol import TaskState


def spec(url: str = "http://prom.internal:9090", **extra: Any) -> dict[str, Any]:
    return {
        "provider": {"kind": "prometheus", "url": url, **extra},
        "queries": [
            {
                "name": "error rate",
                "query": "sum(rate(errors_total[1m])) / sum(rate(requests_total[1m])) * 100",
                "bad": "up",
                "threshold": {"delta": 1},
                "unit": " %",
            }
        ],
        "window": {"analysis": "10m", "baseline": "before"},
    }


async def finished_deployment(
    store: Store, *, started_at: float = 1000.0, finished_at: float = 1060.0, deployed: bool = True
) -> str:
    """A deployment task that ran (inserted as the store keeps it), its id."""
    task = TaskRecord(
        id=new_id("task"),
        type="shell",
        state=TaskState.SUCCEEDED,
        payload={"type": "shell", "script": "deploy"},
        selectors=(),
        timeout_s=60,
        queue_timeout_s=60,
        max_attempts=1,
        created_at=started_at - 1,
        started_at=started_at,
        finished_at=finished_at,
        deployment={"service": "shop", "environment": "prod"} if deployed else None,
    )
    stored, _ = await store.insert_task(task, idempotency_window=0)
    return stored.id
