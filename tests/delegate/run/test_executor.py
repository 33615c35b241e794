from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from delegate.run.executor import ExecutionResult, execute
from delegate.run.logstream import LogStream
from delegate.run.taskdirs import TaskDirs
from shared.limits import MAX_LOG_LINE_BYTES
from shared.masking import MASK, Masker
from shared.protocol import (
    CapabilityPayload,
    HttpPayload,
    LogLine,
    ShellPayload,
    TaskPayload,
    TaskSpec,
)
from tests.delegate.run.test_process import reap_stray, wait_gone

SECRET = "s3cr3t-value-42"
MASKED = MASK.decode()


@dataclass
class Run:
    result: ExecutionResult
    lines: list[LogLine]

    def texts(self, stream: str | None = None) -> list[str]:
        return [line.text for line in self.lines if stream is None or line.stream == stream]


async def run(
    payload: TaskPayload,
    work_root: Path,
    *,
    secret_env: Mapping[str, str] | None = None,
    timeout_s: float = 10,
    kill_grace: float = 0.2,
    flush_after: float = 0.05,
    cancel: asyncio.Event | None = None,
    on_line: Callable[[LogLine], None] = lambda line: None,
    task_dirs: TaskDirs | None = None,
) -> Run:
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)
        on_line(line)

    secret_env = {"SECRET_TOKEN": SECRET} if secret_env is None else secret_env
    log = LogStream(Masker(secret_env.values()), sink, flush_after=flush_after)
    spec = TaskSpec(id="task-1", payload=payload, timeout_s=timeout_s)
    result = await asyncio.wait_for(
        execute(
            spec,
            secret_env=secret_env,
            log=log,
            cancel=cancel or asyncio.Event(),
            kill_grace=kill_grace,
            work_root=work_root,
            task_dirs=task_dirs,
        ),
        30,
    )
    return Run(result, lines)


def shell(script: str, **kwargs: object) -> ShellPayload:
    return ShellPayload.model_validate({"script": script, **kwargs})


def when_line(text: str, then: Callable[[], None]) -> Callable[[LogLine], None]:
    def on_line(line: LogLine) -> None:
        if line.text == text:
            then()

    return on_line


# --- shell: outcome -------------------------------------------------------------------


async def test_exit_zero_succeeds(tmp_path: Path) -> None:
    r = await run(shell("true"), tmp_path)

    assert (r.result.status, r.result.exit_code, r.result.error) == ("succeeded", 0, None)


async def test_nonzero_exit_fails_with_its_exit_code(tmp_path: Path) -> None:
    r = await run(shell("exit 2"), tmp_path)

    assert (r.result.status, r.result.exit_code, r.result.error) == ("failed", 2, "exit code 2")


async def test_death_by_signal_reports_the_negative_signal_number(tmp_path: Path) -> None:
    r = await run(shell("kill -KILL $$"), tmp_path)

    assert r.result.status == "failed"
    assert r.result.exit_code == -9
    assert r.result.error == "killed by signal SIGKILL"


async def test_sh_interpreter_runs_the_script(tmp_path: Path) -> None:
    r = await run(shell('[ -z "$BASH_VERSION" ] && echo plain sh', interpreter="sh"), tmp_path)

    assert r.texts("stdout") == ["plain sh"]


async def test_start_and_finish_times_are_recorded(tmp_path: Path) -> None:
    r = await run(shell("true"), tmp_path)

    assert 0 < r.result.started_at <= r.result.finished_at


# --- shell: output --------------------------------------------------------------------


async def test_stdout_and_stderr_are_captured_in_order_per_stream(tmp_path: Path) -> None:
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf tail"

    r = await run(shell(script), tmp_path)

    assert r.texts("stdout") == ["out1", "out2", "out3", "tail"]
    assert r.texts("stderr") == ["err1", "err2", "err3"]
    assert [line.seq for line in r.lines] == list(range(len(r.lines)))


async def test_large_output_is_not_lost(tmp_path: Path) -> None:
    # seq writes in 4 KiB blocks that end mid-line; on a loaded machine a pause between two
    # blocks outlasts a short flush_after and ships the half line early, as designed. This
    # test is about loss, so no partial flush and no timeout can fire while it runs.
    r = await run(shell("seq 1 20000"), tmp_path, flush_after=3600, timeout_s=3600)

    assert r.texts("stdout") == [str(i) for i in range(1, 20001)]


async def test_output_variables_are_returned(tmp_path: Path) -> None:
    script = (
        'echo "VERSION=1.2.3" >> "$TETHER_OUTPUT"; echo "URL=http://x/?a=b" >> "$TETHER_OUTPUT"'
    )

    r = await run(shell(script), tmp_path)

    assert r.result.outputs == {"VERSION": "1.2.3", "URL": "http://x/?a=b"}


async def test_output_file_ignores_blank_and_comment_lines(tmp_path: Path) -> None:
    script = 'printf "# note\\n\\n  \\nA=1\\n" > "$TETHER_OUTPUT"'

    r = await run(shell(script), tmp_path)

    assert r.result.outputs == {"A": "1"}
    assert r.texts("system") == []


async def test_malformed_output_line_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    script = 'printf "A=1\\nnot a pair\\n9X=2\\n" > "$TETHER_OUTPUT"'

    r = await run(shell(script), tmp_path)

    assert r.result.status == "succeeded"
    assert r.result.outputs == {"A": "1"}
    assert r.texts("system") == [
        "$TETHER_OUTPUT line 2 is not KEY=VALUE; ignored",
        "$TETHER_OUTPUT line 3 is not KEY=VALUE; ignored",
    ]


async def test_an_output_value_with_a_nul_byte_is_ignored_with_a_line_saying_so(
    tmp_path: Path,
) -> None:
    script = r"""printf 'A=1\nB=x\0y\nC=\377\n' > "$TETHER_OUTPUT" """

    r = await run(shell(script), tmp_path)

    assert r.result.status == "succeeded"
    # No store keeps a NUL in text; bytes that are not UTF-8 are replaced, as ever.
    assert r.result.outputs == {"A": "1", "C": "\ufffd"}
    assert r.texts("system") == ["$TETHER_OUTPUT line 2 has a NUL byte in its value; ignored"]


async def test_output_value_carrying_a_secret_is_masked(tmp_path: Path) -> None:
    r = await run(shell('echo "TOKEN=$SECRET_TOKEN" > "$TETHER_OUTPUT"'), tmp_path)

    assert r.result.outputs == {"TOKEN": MASKED}


async def test_output_whose_name_holds_a_secret_is_dropped(tmp_path: Path) -> None:
    secret = "SECRETVALUE"
    script = (
        'echo "${NAME}=x" > "$TETHER_OUTPUT"; echo "MY_${NAME}_2=y" >> "$TETHER_OUTPUT"; '
        'echo "AKIAIOSFODNN7EXAMPLE=z" >> "$TETHER_OUTPUT"; echo "KEPT=1" >> "$TETHER_OUTPUT"'
    )
    r = await run(shell(script), tmp_path, secret_env={"NAME": secret})

    assert r.result.outputs == {"KEPT": "1"}
    assert r.texts("system") == [
        f"$TETHER_OUTPUT line {n} has a secret in its name; ignored" for n in (1, 2, 3)
    ]
    assert not any(secret in text or "AKIAIOSFODNN7" in text for text in r.texts())


async def test_value_stored_with_a_newline_is_masked_where_the_script_drops_it(
    tmp_path: Path,
) -> None:
    # A secret file made with `echo pw > file` ends in a newline; `$(...)` drops it.
    value = "it's-a-Pa55word"
    script = """
        pw=$(printf '%s' "$PW")
        echo "PLAIN=$pw" >> "$TETHER_OUTPUT"
        echo "B64=$(printf '%s' "$pw" | base64)" >> "$TETHER_OUTPUT"
        printf '{"password": "%s"}\n' "$pw"
        printf '%s' "$pw" | base64
        printf '%q\n' "$pw"
        echo "${pw@Q}"
        set -x
        X="$pw"
    """
    r = await run(shell(script), tmp_path, secret_env={"PW": value + "\n"})

    assert r.result.status == "succeeded"
    assert r.result.outputs == {"PLAIN": MASKED, "B64": MASKED}
    shown = "\n".join(r.texts())
    encoded = base64.b64encode(value.encode()).decode()
    for leaked in ("Pa55word", encoded[:-2], encoded[2:]):
        assert leaked not in shown, shown
    assert shown.count(MASKED) == 5


async def test_outputs_of_a_failed_task_are_still_returned(tmp_path: Path) -> None:
    r = await run(shell('echo "STEP=3" > "$TETHER_OUTPUT"; exit 1'), tmp_path)

    assert (r.result.status, r.result.outputs) == ("failed", {"STEP": "3"})


# --- shell: environment ---------------------------------------------------------------


async def test_payload_env_and_secret_env_are_visible_to_the_script(tmp_path: Path) -> None:
    script = '[ "$SECRET_TOKEN" = "s3cr3t-value-42" ] && echo "$GREETING secret ok"'

    r = await run(shell(script, env={"GREETING": "hello"}), tmp_path)

    assert r.texts("stdout") == ["hello secret ok"]


async def test_secret_printed_by_the_script_is_masked_in_the_log(tmp_path: Path) -> None:
    r = await run(shell('echo "token: $SECRET_TOKEN"; echo "$SECRET_TOKEN" >&2'), tmp_path)

    assert r.texts() == [f"token: {MASKED}", MASKED]


async def test_task_id_and_tmpdir_are_set(tmp_path: Path) -> None:
    r = await run(shell('echo "$TETHER_TASK_ID"; [ "$TMPDIR" = "$PWD" ] && echo same'), tmp_path)

    assert r.texts("stdout") == ["task-1", "same"]


async def test_delegate_environment_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELEGATE_ONLY_CREDENTIAL", "do-not-pass")

    r = await run(shell('echo "${DELEGATE_ONLY_CREDENTIAL-unset}"'), tmp_path)

    assert r.texts("stdout") == ["unset"]


async def test_task_directory_is_private(tmp_path: Path) -> None:
    r = await run(shell('stat -c %a "$TMPDIR"'), tmp_path)

    assert r.texts("stdout") == ["700"]


async def test_task_directory_is_removed_afterwards(tmp_path: Path) -> None:
    r = await run(shell('mkdir -p deep/er && echo x > deep/er/f && echo "$PWD"'), tmp_path)

    assert r.result.status == "succeeded"
    assert not Path(r.texts("stdout")[0]).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "script",
    [
        "true",  # only the delegate's own files: removed without a worker thread
        'rm "$TETHER_OUTPUT"',
        'rm "$0" && mkdir "$0" && touch "$0/x"',  # a file replaced by a directory
        'ln -s / "$TMPDIR/root"',  # a link is removed, never followed
        'rm "$TETHER_OUTPUT" && ln -s "$HOME" "$TETHER_OUTPUT"',  # in place of our file
    ],
)
async def test_the_task_directory_is_removed_whatever_the_task_left(
    tmp_path: Path, script: str
) -> None:
    r = await run(shell(script), tmp_path)

    assert r.result.status == "succeeded"
    assert list(tmp_path.iterdir()) == []


async def test_the_output_file_exists_empty_and_private_before_the_script_runs(
    tmp_path: Path,
) -> None:
    # Made in the same worker-thread hop as the script: the contract is unchanged.
    r = await run(shell('stat -c "%a %s" "$TETHER_OUTPUT"; test -w "$TETHER_OUTPUT"'), tmp_path)

    assert r.result.status == "succeeded"
    assert r.texts("stdout") == ["600 0"]
    assert r.result.outputs == {}


async def test_a_task_whose_files_cannot_be_made_leaves_no_directory(tmp_path: Path) -> None:
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)

    result = await execute(
        TaskSpec(id="task-1", payload=shell("echo ran"), timeout_s=10),
        secret_env={},
        secret_files={"NOT/A/NAME": b"content"},
        log=LogStream(Masker(), sink, flush_after=0.05),
        cancel=asyncio.Event(),
        kill_grace=0.2,
        work_root=tmp_path,
    )

    assert result.status == "failed"
    assert result.error is not None
    assert "is not a variable name" in result.error
    assert not [line for line in lines if line.stream == "stdout"]
    assert list(tmp_path.iterdir()) == []


async def test_a_working_dir_that_leads_out_leaves_no_directory(tmp_path: Path) -> None:
    r = await run(shell("echo ran", working_dir="../.."), tmp_path)

    assert r.result.status == "failed"
    assert r.texts("stdout") == []
    assert list(tmp_path.iterdir()) == []


# --- shell: working directory -----------------------------------------------------------


async def test_relative_working_dir_is_created_inside_the_task_directory(
    tmp_path: Path,
) -> None:
    r = await run(shell('echo "$PWD"; echo "$TMPDIR"', working_dir="sub/dir"), tmp_path)

    pwd, task_dir = r.texts("stdout")
    assert pwd == f"{task_dir}/sub/dir"


async def test_absolute_working_dir_is_used_as_is(tmp_path: Path) -> None:
    target = tmp_path / "existing"
    target.mkdir()

    r = await run(shell("pwd", working_dir=str(target)), tmp_path / "work")

    assert r.texts("stdout") == [str(target)]


async def test_missing_absolute_working_dir_fails_before_running(tmp_path: Path) -> None:
    missing = tmp_path / "missing"

    r = await run(shell("echo ran", working_dir=str(missing)), tmp_path / "work")

    assert r.result.status == "failed"
    assert r.result.error == f"working_dir {missing} does not exist or is not a directory"
    assert r.lines == []


async def test_working_dir_may_not_lead_out_of_the_task_directory(tmp_path: Path) -> None:
    r = await run(shell("echo ran", working_dir="../../etc"), tmp_path)

    assert r.result.status == "failed"
    assert r.result.error == "working_dir ../../etc leads out of the task's directory"


async def test_error_text_never_shows_a_secret(tmp_path: Path) -> None:
    r = await run(shell("true", working_dir=f"/nonexistent/{SECRET}"), tmp_path)

    assert r.result.error is not None
    assert SECRET not in r.result.error
    assert MASKED in r.result.error


# --- shell: stopping --------------------------------------------------------------------


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids: list[int] = []

    def on_line(line: LogLine) -> None:
        pids.append(int(line.text))

    r = await run(shell("sleep 1000 & echo $!; wait"), tmp_path, timeout_s=0.5, on_line=on_line)
    try:
        assert r.result.status == "timed_out"
        assert r.result.error == "timed out after 0.5 s"
        await wait_gone(pids[0])
    finally:
        reap_stray(pids[0])


async def test_background_child_is_killed_when_the_script_exits(tmp_path: Path) -> None:
    r = await run(shell("sleep 1000 & echo $!"), tmp_path)
    pid = int(r.texts("stdout")[0])
    try:
        assert r.result.status == "succeeded"
        await wait_gone(pid)
    finally:
        reap_stray(pid)


async def test_process_that_left_the_group_does_not_hold_the_task(tmp_path: Path) -> None:
    # The fifo makes the script wait until the sleeper is in a session of its own.
    script = "mkfifo f; setsid sh -c 'echo $$ > f; exec sleep 1000' & read pid < f; echo $pid"

    r = await run(shell(script), tmp_path, kill_grace=0.2)
    pid = int(r.texts("stdout")[0])
    reap_stray(pid)

    assert r.result.status == "succeeded"
    assert r.texts("system") == [
        "a process outside the task's process group still held its output open; stopped reading it"
    ]


async def test_cancel_event_stops_the_task_with_sigterm(tmp_path: Path) -> None:
    cancel = asyncio.Event()

    r = await run(
        shell("echo started; sleep 1000"),
        tmp_path,
        cancel=cancel,
        on_line=when_line("started", cancel.set),
    )

    assert r.result.status == "cancelled"
    assert r.result.exit_code == -15


async def test_task_ignoring_sigterm_is_sigkilled_after_the_grace(tmp_path: Path) -> None:
    cancel = asyncio.Event()

    r = await run(
        shell("trap '' TERM; echo started; sleep 1000"),
        tmp_path,
        cancel=cancel,
        kill_grace=0.2,
        on_line=when_line("started", cancel.set),
    )

    assert r.result.status == "cancelled"
    assert r.result.exit_code == -9


async def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    cancel = asyncio.Event()
    cancel.set()

    r = await run(shell("echo ran"), tmp_path, cancel=cancel)

    assert r.result.status == "cancelled"
    assert r.lines == []
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


async def test_output_written_before_a_timeout_is_kept(tmp_path: Path) -> None:
    r = await run(shell("echo before; printf partial; sleep 1000"), tmp_path, timeout_s=0.5)

    assert r.result.status == "timed_out"
    assert r.texts("stdout") == ["before", "partial"]


# --- http -------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    # Set when a request reaches /hang, which answers only at teardown.
    hanging: asyncio.Event


@pytest.fixture
async def http_server() -> AsyncIterator[Server]:
    release = asyncio.Event()
    hanging = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="hello\nworld")

    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.Response(text=f"{request.method} {request.headers.get('X-Token')} {body}")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"a" * (100 * 1024))

    async def hang(request: web.Request) -> web.Response:
        hanging.set()
        await release.wait()
        return web.Response()

    app = web.Application()
    for path, handler in [("/ok", ok), ("/boom", boom), ("/echo", echo), ("/big", big)]:
        app.router.add_route("*", path, handler)
    app.router.add_get("/hang", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield Server(f"http://{host}:{port}", hanging)
    release.set()
    await runner.cleanup()


async def test_http_2xx_succeeds_and_logs_status_and_body(
    http_server: Server, tmp_path: Path
) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/ok"), tmp_path)

    assert r.result.status == "succeeded"
    assert r.result.outputs == {"status_code": "200"}
    assert r.texts("stdout") == ["HTTP 200 OK", "hello", "world"]


async def test_http_500_fails_with_unexpected_status(http_server: Server, tmp_path: Path) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/boom"), tmp_path)

    assert r.result.status == "failed"
    assert r.result.error == "unexpected status 500"
    assert r.result.outputs == {"status_code": "500"}


async def test_http_expect_status_accepts_a_listed_status(
    http_server: Server, tmp_path: Path
) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/boom", expect_status=[500, 503]), tmp_path)

    assert r.result.status == "succeeded"


async def test_http_expect_status_rejects_an_unlisted_2xx(
    http_server: Server, tmp_path: Path
) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/ok", expect_status=[201]), tmp_path)

    assert (r.result.status, r.result.error) == ("failed", "unexpected status 200")


async def test_http_sends_method_headers_and_body(http_server: Server, tmp_path: Path) -> None:
    payload = HttpPayload(
        method="PUT", url=f"{http_server.url}/echo", headers={"X-Token": "t"}, body="hi"
    )

    r = await run(payload, tmp_path)

    assert r.texts("stdout")[1] == "PUT t hi"


async def test_http_response_echoing_a_secret_is_masked(
    http_server: Server, tmp_path: Path
) -> None:
    payload = HttpPayload(method="POST", url=f"{http_server.url}/echo", headers={"X-Token": SECRET})

    r = await run(payload, tmp_path)

    assert r.texts("stdout")[1] == f"POST {MASKED} "


async def test_http_body_beyond_64k_is_truncated_with_a_note(
    http_server: Server, tmp_path: Path
) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/big"), tmp_path)

    body = "".join(r.texts("stdout")[1:])
    assert len(body) == 64 * 1024
    assert all(len(t) <= MAX_LOG_LINE_BYTES for t in r.texts())
    assert r.texts("system") == ["[truncated] response body beyond 65536 bytes not shown"]
    assert r.lines[-1].stream == "system"


async def test_http_connection_refused_fails_with_the_error_class(
    closed_port: int, tmp_path: Path
) -> None:
    payload = HttpPayload(url=f"http://127.0.0.1:{closed_port}/", headers={"X-Token": "hdr"})

    r = await run(payload, tmp_path)

    assert r.result.status == "failed"
    assert r.result.error is not None
    assert r.result.error.startswith("ClientConnectorError: ")
    assert "hdr" not in r.result.error


async def test_http_timeout(http_server: Server, tmp_path: Path) -> None:
    r = await run(HttpPayload(url=f"{http_server.url}/hang"), tmp_path, timeout_s=0.3)

    assert (r.result.status, r.result.error) == ("timed_out", "timed out after 0.3 s")


async def test_http_cancel(http_server: Server, tmp_path: Path) -> None:
    cancel = asyncio.Event()

    async def cancel_once_hanging() -> None:
        await http_server.hanging.wait()
        cancel.set()

    canceller = asyncio.create_task(cancel_once_hanging())
    r = await run(HttpPayload(url=f"{http_server.url}/hang"), tmp_path, cancel=cancel)
    await canceller

    assert (r.result.status, r.result.error) == ("cancelled", "cancelled")


# --- capability -------------------------------------------------------------------------


@pytest.fixture
async def listening_port() -> AsyncIterator[int]:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_capability_reaches_a_listening_port(listening_port: int, tmp_path: Path) -> None:
    r = await run(CapabilityPayload(target=f"127.0.0.1:{listening_port}"), tmp_path)

    assert (r.result.status, r.result.outputs) == ("succeeded", {"reachable": "true"})


async def test_capability_reports_a_refused_port(closed_port: int, tmp_path: Path) -> None:
    r = await run(CapabilityPayload(target=f"127.0.0.1:{closed_port}"), tmp_path)

    assert r.result.status == "failed"
    assert r.result.error == f"connection to 127.0.0.1:{closed_port} refused"


async def test_capability_http_url_is_a_tcp_check(listening_port: int, tmp_path: Path) -> None:
    r = await run(CapabilityPayload(target=f"http://127.0.0.1:{listening_port}/x"), tmp_path)

    assert r.result.status == "succeeded"


async def test_capability_tls_handshake_failure_is_reported(
    listening_port: int, tmp_path: Path
) -> None:
    # The listener closes at once: no TLS server behind it.
    r = await run(CapabilityPayload(target=f"https://127.0.0.1:{listening_port}"), tmp_path)

    assert r.result.status == "failed"
    assert r.result.error is not None
    assert f"127.0.0.1:{listening_port}" in r.result.error


@pytest.mark.parametrize("target", ["no-port", "host:0", "host:99999", "ftp://host/x", ":80"])
async def test_capability_rejects_a_malformed_target(target: str, tmp_path: Path) -> None:
    r = await run(CapabilityPayload(target=target), tmp_path)

    assert r.result.status == "failed"
    assert r.result.error is not None
    assert "target" in r.result.error


async def test_cancelling_execute_itself_kills_the_process_group(tmp_path: Path) -> None:
    started = asyncio.Event()
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)
        started.set()

    spec = TaskSpec(id="t", payload=shell("sleep 1000 & echo $!; wait"), timeout_s=60)
    log = LogStream(Masker(), sink, flush_after=0.05)
    task = asyncio.create_task(
        execute(
            spec,
            secret_env={},
            log=log,
            cancel=asyncio.Event(),
            kill_grace=0.2,
            work_root=tmp_path,
        )
    )
    await asyncio.wait_for(started.wait(), 5)
    pid = int(lines[0].text)
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

        await wait_gone(pid)
        assert list(tmp_path.iterdir()) == []
    finally:
        reap_stray(pid)
