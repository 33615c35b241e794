"""Output that is not text, end to end on both stores: a real task prints NUL and bytes that
are not UTF-8 (with a secret between them), succeeds, and its log is whole, byte for byte,
through the API and through ``tether task logs`` into a pipe.

(On PostgreSQL one NUL used to fail the log insert: the manager answered 503, the delegate
retried forever, and the task, which had exited 0, ended failed with no lines.)
"""

from __future__ import annotations

import asyncio

from manager.schemas.tasks import LogEntry, TaskSubmit
from shared.masking import MASK
from shared.protocol import ShellPayload
from tests.e2e.harness import BIN, WAIT, Cluster
from tests.faults.support import client, log_entries, wait_final

SECRET = "s3cret-between-odd-bytes"
SCRIPT = r"""printf 'a\0b\377c\n'
printf '\0%s\377\n' "$PW"
printf 'plain\n'
printf 'no newline at the end \0'
"""
EXPECTED = [b"a\x00b\xffc", b"\x00" + MASK + b"\xff", b"plain", b"no newline at the end \x00"]


async def test_nul_and_invalid_utf8_output_is_kept_byte_for_byte(running: Cluster) -> None:
    await running.start_delegate("bytes")
    async with client(running) as api:
        task = await api.submit_task(
            TaskSubmit(payload=ShellPayload(script=SCRIPT), secret_env={"PW": SECRET})
        )

    final = await wait_final(running, task.id)

    assert (final["state"], final["exit_code"]) == ("succeeded", 0)
    entries = [LogEntry.model_validate(e) for e in await log_entries(running, task.id)]
    assert [e.raw for e in entries if e.stream == "stdout"] == EXPECTED
    assert not [e for e in entries if e.stream == "stderr"]
    # The CLI writes the lines into a pipe as they were printed.
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "tether"),
        "task",
        "logs",
        task.id,
        env=running.cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert out == b"".join(line + b"\n" for line in EXPECTED)
    assert SECRET.encode() not in out + err
