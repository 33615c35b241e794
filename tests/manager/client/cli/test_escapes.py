"""Task output is the task's to write, and a task's code is not to be trusted with the
operator's terminal: on a terminal, ``tether task logs`` and ``task run`` show every control
character (ESC, CSI, BEL, carriage return...) as a visible ``\\xNN``; to a file or a pipe,
and in ``--output json``, the text is the data as it was."""

from __future__ import annotations

import base64
import io
import json

import pytest

from manager.client import EndEvent, FollowEvent, StateEvent, TetherClient
from manager.client.cli.main import Config, run_cli
from manager.client.cli.output import visible
from manager.schemas.tasks import LogEntry, LogPage
from shared.logbytes import shown
from shared.protocol import TaskState
from tests.manager.client.cli.test_main import ENV, FINISHED, FakeClient, Terminal, log

# Clears the screen, retitles the window, rings the bell, and hides a line behind another.
HOSTILE = "ok\x1b[2J\x1b]0;pwned\x07 done\rFAKE\tcol\x9b31m"
SHOWN = "ok\\x1b[2J\\x1b]0;pwned\\x07 done\\x0dFAKE\tcol\\x9b31m"


def run(*argv: str, client: FakeClient, tty: bool) -> tuple[int, str, str]:
    out, err = (Terminal(), Terminal()) if tty else (io.StringIO(), io.StringIO())

    def factory(config: Config) -> TetherClient:
        return client

    code = run_cli(argv, env=ENV, out=out, err=err, client_factory=factory)
    return code, out.getvalue(), err.getvalue()


def _pages() -> list[LogPage]:
    lines = [log(0, HOSTILE).line, log(1, HOSTILE, "stderr").line]
    return [
        LogPage(lines=lines, cursor="1:1", state=TaskState.SUCCEEDED),
        LogPage(lines=[], cursor="1:1", state=TaskState.SUCCEEDED),
    ]


def test_visible_keeps_text_tabs_and_newlines() -> None:
    assert visible(HOSTILE) == SHOWN
    assert visible("plain\ttext\nnext line ünïcode") == "plain\ttext\nnext line ünïcode"
    assert all(
        visible(chr(c)).startswith("\\x")
        for c in [*range(0x20), *range(0x7F, 0xA0)]
        if chr(c) not in "\t\n"
    )


def test_task_logs_on_a_terminal_shows_escapes() -> None:
    code, out, err = run("task", "logs", "task_1", client=FakeClient(pages=_pages()), tty=True)
    assert (code, out, err) == (0, SHOWN + "\n", SHOWN + "\n")
    assert "\x1b" not in out + err


def test_task_logs_to_a_pipe_keeps_the_bytes() -> None:
    code, out, err = run("task", "logs", "task_1", client=FakeClient(pages=_pages()), tty=False)
    assert (code, out, err) == (0, HOSTILE + "\n", HOSTILE + "\n")


@pytest.mark.parametrize("tty", [True, False])
def test_task_logs_as_json_keeps_the_text_as_data(tty: bool) -> None:
    client = FakeClient(pages=_pages())
    code, out, _ = run("--output", "json", "task", "logs", "task_1", client=client, tty=tty)
    assert code == 0
    assert "\x1b" not in out  # JSON escapes it (\u001b) ...
    texts = [json.loads(line)["text"] for line in out.splitlines()]
    assert texts == [HOSTILE, HOSTILE]  # ... and it decodes to what the task wrote


# A line that is not UTF-8 text: a NUL, a byte no UTF-8 has, and an escape sequence.
ODD = b"a\x00b\xffc\x1b[2J"


def _binary_pages() -> list[LogPage]:
    data = base64.b64encode(ODD).decode()
    lines = [
        LogEntry(attempt=1, seq=s, stream=stream, ts=1.0, text=shown(ODD), data=data)
        for s, stream in enumerate(("stdout", "stderr"))
    ]
    return [
        LogPage(lines=lines, cursor="1:1", state=TaskState.SUCCEEDED),
        LogPage(lines=[], cursor="1:1", state=TaskState.SUCCEEDED),
    ]


def test_task_logs_to_a_pipe_writes_a_binary_line_as_its_exact_bytes() -> None:
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out, err = io.TextIOWrapper(out_bytes, "utf-8"), io.TextIOWrapper(err_bytes, "utf-8")
    client = FakeClient(pages=_binary_pages())

    code = run_cli(
        ["task", "logs", "task_1"], env=ENV, out=out, err=err, client_factory=lambda _: client
    )
    out.flush()
    err.flush()

    assert (code, out_bytes.getvalue(), err_bytes.getvalue()) == (0, ODD + b"\n", ODD + b"\n")


def test_task_logs_on_a_terminal_shows_a_binary_lines_odd_bytes_as_escapes() -> None:
    code, out, err = run(
        "task", "logs", "task_1", client=FakeClient(pages=_binary_pages()), tty=True
    )
    assert (code, out, err) == (0, "a\\x00b\\xffc\\x1b[2J\n", "a\\x00b\\xffc\\x1b[2J\n")


def test_task_logs_as_json_carries_a_binary_lines_bytes_in_base64() -> None:
    client = FakeClient(pages=_binary_pages())
    code, out, _ = run("--output", "json", "task", "logs", "task_1", client=client, tty=False)
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    assert [base64.b64decode(e["data"]) for e in entries] == [ODD, ODD]
    assert [e["text"] for e in entries] == ["a\ufffdb\ufffdc\x1b[2J"] * 2


def test_task_run_on_a_terminal_shows_escapes() -> None:
    events: list[FollowEvent] = [
        StateEvent(state=TaskState.RUNNING),
        log(0, HOSTILE),
        log(1, HOSTILE, "stderr"),
        EndEvent(task=FINISHED),
    ]
    code, out, err = run("task", "run", "--", "true", client=FakeClient(events=events), tty=True)
    assert code == 0
    assert out.startswith(SHOWN + "\n")
    assert SHOWN + "\n" in err
    # (The spinner's own \r and ESC [K are the command's, not the task's.)
    for raw in ("\x1b[2J", "\x1b]0;", "\x07", "\rFAKE", "\x9b"):
        assert raw not in out + err
