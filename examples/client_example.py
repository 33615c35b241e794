"""Submit a shell task with the Python client, follow its log, print how it ended.

export TETHER_MANAGER_URL=https://127.0.0.1:8443
export TETHER_CA_FILE=.tether-data/tls/ca.pem
export TETHER_API_KEY=$(cat .tether-data/admin-api-key)
python examples/client_example.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from manager.client import EndEvent, LogEvent, StateEvent, TetherClient, TetherClientError
from manager.schemas.tasks import TaskSubmit
from shared.protocol import ShellPayload


async def main() -> int:
    ca_file = os.environ.get("TETHER_CA_FILE")
    client = TetherClient(
        os.environ.get("TETHER_MANAGER_URL", "https://127.0.0.1:8443"),
        api_key=os.environ["TETHER_API_KEY"],
        ca_file=Path(ca_file) if ca_file else None,
    )
    async with client:
        task = await client.submit_task(
            TaskSubmit(
                payload=ShellPayload(
                    script='echo "hello from $(hostname)"\necho "GREETING=hi" >> "$TETHER_OUTPUT"'
                ),
                timeout_s=60,
            )
        )
        print(f"submitted {task.id}")
        async for event in client.follow_logs(task.id):
            if isinstance(event, StateEvent):
                print(f"-- {event.state}")
            elif isinstance(event, LogEvent):
                print(f"[{event.line.stream}] {event.line.text}")
            elif isinstance(event, EndEvent):
                final = event.task
                print(f"{final.id}: {final.state} exit={final.exit_code} outputs={final.outputs}")
                return 0 if final.exit_code == 0 else 1
    return 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except TetherClientError as exc:
        sys.exit(f"error: {exc}")
