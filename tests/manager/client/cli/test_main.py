"""The ``tether`` command, against a test double of the client (no network)."""

from __future__ import annotations

import asyncio
import io
import json
import shlex
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from manager.client import (
    ApiError,
    ConnectionFailed,
    EndEvent,
    FollowEvent,
    LogEvent,
    StateEvent,
    TetherClient,
    TetherClientError,
)
from manager.client.cli.main import Config, build_parser, build_submit, run_cli
from manager.client.cli.output import summary_line, task_details, to_json
from manager.client.cli.tasks import exit_code_for
from manager.schemas.tasks import (
    AttemptView,
    LogEntry,
    LogPage,
    TaskSubmit,
    TaskView,
    TokenCreate,
    TokenCreated,
    TokenView,
)
from shared.protocol import ShellPayload, TaskState, TaskType

ENV = {"TETHER_API_KEY": "tk_secret_key"}


def task_view(state: TaskState = TaskState.QUEUED, **changes: Any) -> TaskView:
    fields: dict[str, Any] = {
        "id": "task_1",
        "type": TaskType.SHELL,
        "state": state,
        "payload": ShellPayload(script="make test"),
        "selectors": ["linux"],
        "secret_env_names": [],
        "timeout_s": 600,
        "queue_timeout_s": 300,
        "max_attempts": 1,
        "attempt": 1,
        "created_at": 1_700_000_000.0,
    }
    fields.update(changes)
    return TaskView(**fields)


FINISHED = task_view(
    TaskState.SUCCEEDED,
    started_at=1_700_000_001.0,
    finished_at=1_700_000_001.42,
    exit_code=0,
    attempts=[
        AttemptView(attempt=1, delegate_id="dlg_1", delegate_name="build-01", started_at=1.0)
    ],
)


def log(seq: int, text: str, stream: str = "stdout") -> LogEvent:
    entry = LogEntry.model_validate(
        {"attempt": 1, "seq": seq, "stream": stream, "ts": 1.0, "text": text}
    )
    return LogEvent(line=entry)


class FakeClient(TetherClient):
    """Answers from canned values and records what the command asked for."""

    def __init__(
        self,
        *,
        task: TaskView | None = None,
        events: Sequence[FollowEvent] = (),
        fail: TetherClientError | None = None,
        follow_fails: TetherClientError | None = None,
        interrupt: asyncio.Event | None = None,
        pages: Sequence[LogPage] = (),
    ) -> None:
        super().__init__("http://127.0.0.1:1", api_key="unused")
        self.task = task or task_view()
        self.events = list(events)
        self.fail = fail
        self.follow_fails = follow_fails
        self.interrupt = interrupt
        self.pages = list(pages)
        self.submitted: list[TaskSubmit] = []
        self.waits: list[float | None] = []
        self.cancelled: list[str] = []
        self.token_requests: list[TokenCreate | None] = []
        self.listed: list[dict[str, object]] = []
        self.afters: list[str | None] = []

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def submit_task(self, task: TaskSubmit, *, wait: float | None = None) -> TaskView:
        self._check()
        self.submitted.append(task)
        self.waits.append(wait)
        return self.task

    async def get_task(self, task_id: str) -> TaskView:
        self._check()
        return self.task

    async def list_tasks(
        self,
        state: TaskState | str | None = None,
        delegate: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        app: str | None = None,
        env: str | None = None,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        id_prefix: str | None = None,
    ) -> list[TaskView]:
        self._check()
        self.listed.append({"app": app, "env": env})
        return [self.task, FINISHED]

    async def list_deployments(
        self,
        app: str | None = None,
        env: str | None = None,
        service: str | None = None,
        status: TaskState | str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        self._check()
        self.listed.append({"app": app, "env": env, "service": service, "status": status})
        return [self.task.model_copy(update={"app": "checkout", "env": "prod"})]

    async def cancel_task(self, task_id: str) -> TaskView:
        self.cancelled.append(task_id)
        return self.task.model_copy(update={"cancel_requested": True})

    async def get_logs(self, task_id: str, after: str | None = None, limit: int = 1000) -> LogPage:
        self.afters.append(after)
        return (
            self.pages.pop(0)
            if self.pages
            else LogPage(lines=[], cursor="", state=TaskState.RUNNING)
        )

    async def follow_logs(
        self, task_id: str, after: str | None = None
    ) -> AsyncGenerator[FollowEvent, None]:
        for event in self.events:
            await asyncio.sleep(0)
            yield event
        if self.follow_fails is not None:
            raise self.follow_fails
        if self.interrupt is not None:
            self.interrupt.set()  # Ctrl-C, while the task is still running
            await asyncio.Event().wait()

    async def create_token(self, name: str, scope: TokenCreate | None = None) -> TokenCreated:
        self.token_requests.append(scope)
        return TokenCreated(id="tok_1", name=name, created_at=1.0, token="dtk_abc123")

    async def list_tokens(self) -> list[TokenView]:
        return [TokenView(id="tok_1", name="ci", created_at=1.0)]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class Result:
    code: int
    out: str
    err: str
    config: Config | None


def tether(
    *argv: str,
    client: FakeClient | None = None,
    env: dict[str, str] | None = None,
    tty: bool = False,
    interrupted: asyncio.Event | None = None,
) -> Result:
    out, err = io.StringIO(), Terminal() if tty else io.StringIO()
    configs: list[Config] = []

    def factory(config: Config) -> TetherClient:
        configs.append(config)
        return client or FakeClient()

    code = run_cli(
        argv,
        env=ENV if env is None else env,
        out=out,
        err=err,
        client_factory=factory,
        interrupted=interrupted,
    )
    return Result(code, out.getvalue(), err.getvalue(), configs[0] if configs else None)


def submit_of(*argv: str) -> TaskSubmit:
    return build_submit(build_parser().parse_args(["task", "run", *argv]))


# --- arguments ---------------------------------------------------------------------------


def test_words_after_double_dash_run_as_typed() -> None:
    submit = submit_of("--", "bash", "-c", 'echo "$HOME"')

    assert isinstance(submit.payload, ShellPayload)
    assert submit.payload.script == shlex.join(["bash", "-c", 'echo "$HOME"'])
    assert submit.payload.script == "bash -c 'echo \"$HOME\"'"


def test_a_single_word_with_spaces_is_quoted_too() -> None:
    submit = submit_of("--", "echo hi; rm -rf /")

    assert isinstance(submit.payload, ShellPayload)
    assert submit.payload.script == "'echo hi; rm -rf /'"


def test_options_after_double_dash_belong_to_the_command() -> None:
    submit = submit_of("--selector", "a", "--", "ls", "--selector", "b")

    assert submit.selectors == ["a"]
    assert isinstance(submit.payload, ShellPayload)
    assert submit.payload.script == "ls --selector b"


def test_selector_repeats() -> None:
    assert submit_of("--selector", "linux", "--selector", "gpu", "--", "true").selectors == [
        "linux",
        "gpu",
    ]


def test_task_options_reach_the_submission() -> None:
    submit = submit_of(
        "--env=MODE=fast",
        "--secret-env",
        "TOKEN=s3cr=t",
        "--timeout",
        "60",
        "--max-attempts",
        "3",
        "--idempotency-key",
        "build-42",
        "--interpreter",
        "sh",
        "--deploy-service",
        "api",
        "--deploy-env",
        "prod",
        "--deploy-version",
        "1.2",
        "--",
        "./deploy.sh",
    )

    assert isinstance(submit.payload, ShellPayload)
    assert submit.payload.env == {"MODE": "fast"}
    assert submit.payload.interpreter == "sh"
    assert submit.secret_env == {"TOKEN": "s3cr=t"}
    assert (submit.timeout_s, submit.max_attempts) == (60, 3)
    assert submit.idempotency_key == "build-42"
    assert submit.deployment is not None
    assert (submit.deployment.service, submit.deployment.version) == ("api", "1.2")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--env", "NOVALUE", "--env expects NAME=VALUE; 'NOVALUE' has no '='"),
        ("--env", "1X=y", "--env: '1X' is not a variable name"),
        ("--secret-env", "hunter2", "--secret-env expects NAME=VALUE; value #1 (not shown)"),
    ],
)
def test_a_bad_assignment_exits_2_with_a_clear_message(
    option: str, value: str, message: str
) -> None:
    result = tether("task", "run", option, value, "--", "true")

    assert result.code == 2
    assert result.err.startswith(f"error: {message}")
    assert result.out == ""


def test_a_secret_value_is_never_echoed_in_an_error() -> None:
    result = tether("task", "run", "--secret-env", "hunter2", "--", "true")

    assert "hunter2" not in result.err


def test_a_bad_option_value_names_the_option() -> None:
    result = tether("task", "submit", "--timeout", "-5", "--", "true")

    assert result.code == 2
    assert result.err.startswith("error: --timeout: ")


def test_no_command_after_double_dash_is_a_usage_error() -> None:
    result = tether("task", "run", "--selector", "x")

    assert result.code == 2
    assert "no command given" in result.err


def test_missing_api_key_says_which_variable_or_flag_sets_it(tmp_path: Path) -> None:
    result = tether("task", "list", env={"TETHER_CONFIG_DIR": str(tmp_path)})

    assert result.code == 2
    assert result.err == (
        "error: not logged in to https://127.0.0.1:8443 (from the default): "
        "run tether login, or set TETHER_API_KEY or --api-key\n"
    )


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("unused by the fake client")
    env = {**ENV, "TETHER_MANAGER_URL": "https://env:1", "TETHER_CA_FILE": str(ca)}

    result = tether("--manager-url", "https://flag:2", "--api-key", "k2", "task", "list", env=env)

    assert result.config is not None
    got = (result.config.manager_url, result.config.ca_file, result.config.api_key)
    assert got == ("https://flag:2", ca, "k2")
    assert not result.config.session
    assert "k2" not in repr(result.config)


def test_a_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    result = tether("task", "list", env={**ENV, "TETHER_CA_FILE": str(tmp_path / "nope.pem")})

    assert result.code == 2
    assert "TETHER_CA_FILE" in result.err


def test_plain_http_is_refused_beyond_loopback() -> None:
    assert tether("--manager-url", "http://manager.example", "task", "list").code == 2
    assert tether("--manager-url", "http://127.0.0.1:8080", "task", "list").code == 0


def test_an_unknown_option_is_a_usage_error_without_a_traceback() -> None:
    result = tether("task", "list", "--bogus")

    assert result.code == 2
    assert result.err.startswith("error: unrecognized arguments: --bogus")


def test_output_json_works_before_and_after_the_subcommand() -> None:
    after = tether("task", "get", "task_1", "--output", "json")
    before = tether("--output", "json", "task", "get", "task_1")

    expected = json.loads(to_json(task_view()))
    assert json.loads(after.out) == json.loads(before.out) == expected
    assert expected["created_at"] == "2023-11-14T22:13:20.000Z"  # RFC 3339, not a number


# --- exit codes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "exit_code", "expected"),
    [
        (TaskState.SUCCEEDED, 0, 0),
        (TaskState.FAILED, 3, 3),
        (TaskState.FAILED, 300, 255),
        (TaskState.FAILED, 0, 1),
        (TaskState.FAILED, -9, 137),
        (TaskState.FAILED, None, 1),
        (TaskState.CANCELLED, None, 130),
        (TaskState.TIMED_OUT, None, 124),
        (TaskState.EXPIRED, None, 125),
    ],
)
def test_exit_code_follows_the_final_state(
    state: TaskState, exit_code: int | None, expected: int
) -> None:
    assert exit_code_for(task_view(state, exit_code=exit_code)) == expected


# --- formatting --------------------------------------------------------------------------


def test_task_details_lists_the_task_as_key_values() -> None:
    text = task_details(FINISHED.model_copy(update={"outputs": {"URL": "https://x"}}))

    lines = text.splitlines()
    assert lines[0].split() == ["id:", "task_1"]
    assert lines[1].split() == ["state:", "succeeded"]
    assert "script:      make test" in lines
    assert any(line.split() == ["delegate:", "build-01"] for line in lines)
    assert any(line.split() == ["duration:", "0.42s"] for line in lines)
    assert any(line.split() == ["output", "URL:", "https://x"] for line in lines)


def test_task_get_text_and_json() -> None:
    client = FakeClient(task=FINISHED)
    text = tether("task", "get", "task_1", client=client)
    as_json = tether("task", "get", "task_1", "--output", "json", client=client)

    assert text.out == task_details(FINISHED) + "\n"
    assert json.loads(as_json.out) == json.loads(to_json(FINISHED))


def test_summary_line_names_the_time_and_the_delegate() -> None:
    assert summary_line(FINISHED) == "task task_1 succeeded in 0.42s on build-01"


def test_control_characters_from_the_server_do_not_reach_the_terminal() -> None:
    text = task_details(task_view(TaskState.FAILED, error="bad\x1b[2Jthing"))

    assert "\x1b" not in text


def test_task_list_is_a_table() -> None:
    lines = tether("task", "list").out.splitlines()

    # Names first; the CREATED column is relative (a date when older than two months).
    assert lines[0].split() == [
        "NAME", "ID", "STATE", "DELEGATE", "CREATED", "DURATION", "EXIT", "LABELS"
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["-", "task_1", "queued"]
    assert lines[2].split() == [
        "-", "task_1", "succeeded", "build-01", "2023-11-14", "0.42s", "0", "-"
    ]  # fmt: skip


# --- run ---------------------------------------------------------------------------------


def run_events(final: TaskView) -> list[FollowEvent]:
    return [
        StateEvent(state=TaskState.QUEUED),
        log(0, "waiting", "system"),
        StateEvent(state=TaskState.RUNNING),
        log(1, "out line"),
        log(2, "err line", "stderr"),
        EndEvent(task=final),
    ]


def test_run_streams_the_log_and_exits_with_the_task_status() -> None:
    failed = FINISHED.model_copy(update={"state": TaskState.FAILED, "exit_code": 3})
    client = FakeClient(events=run_events(failed))

    result = tether("task", "run", "--", "make", "test", client=client)

    assert result.code == 3
    assert result.out == "out line\n"
    assert result.err.splitlines() == [
        "[tether] task task_1 submitted",
        "[tether] waiting",
        "err line",
        "task task_1 failed with exit code 3 after 0.42s on build-01",
    ]
    assert isinstance(client.submitted[0].payload, ShellPayload)
    assert client.submitted[0].payload.script == "make test"


def test_run_prints_output_variables_after_the_summary() -> None:
    done = FINISHED.model_copy(update={"outputs": {"VERSION": "1.2"}})
    result = tether("task", "run", "--", "true", client=FakeClient(events=[EndEvent(task=done)]))

    assert result.code == 0
    assert result.err.splitlines()[-2:] == [
        "task task_1 succeeded in 0.42s on build-01",
        "  VERSION=1.2",
    ]


def test_run_quiet_prints_no_summary() -> None:
    result = tether(
        "task", "run", "-q", "--", "true", client=FakeClient(events=run_events(FINISHED))
    )

    assert result.code == 0
    assert "succeeded" not in result.err
    assert "submitted" not in result.err


def test_run_shows_a_spinner_while_queued_on_a_terminal_only() -> None:
    on_tty = tether(
        "task", "run", "--", "true", client=FakeClient(events=run_events(FINISHED)), tty=True
    )
    piped = tether("task", "run", "--", "true", client=FakeClient(events=run_events(FINISHED)))

    assert "waiting for a delegate…" in on_tty.err
    # Cleared once the task runs: the spinner's last drawing is wiped before the next line.
    last = on_tty.err.rindex("waiting for a delegate")
    assert "\r\x1b[K" in on_tty.err[last : on_tty.err.index("err line")]
    assert "waiting for a delegate" not in piped.err
    assert "\x1b" not in piped.err


def test_ctrl_c_while_following_cancels_the_task_and_exits_130() -> None:
    interrupted = asyncio.Event()
    client = FakeClient(
        events=[StateEvent(state=TaskState.RUNNING), log(1, "working")], interrupt=interrupted
    )

    result = tether("task", "run", "--", "sleep", "100", client=client, interrupted=interrupted)

    assert result.code == 130
    assert client.cancelled == ["task_1"]
    assert "[tether] interrupted: cancelling task task_1" in result.err


def test_ctrl_c_while_following_logs_leaves_the_task_alone() -> None:
    interrupted = asyncio.Event()
    client = FakeClient(events=[log(1, "working")], interrupt=interrupted)

    result = tether("task", "logs", "task_1", "-f", client=client, interrupted=interrupted)

    assert result.code == 130
    assert client.cancelled == []


def test_a_lost_stream_says_how_to_follow_again() -> None:
    client = FakeClient(follow_fails=ConnectionFailed("lost the log stream of task task_1"))

    result = tether("task", "run", "--", "true", client=client)

    assert result.code == 3
    assert result.err.splitlines()[-1] == (
        "error: lost the log stream of task task_1. The task goes on; "
        "follow it with: tether task logs task_1 --follow"
    )


def test_submit_prints_the_task_id_alone_on_the_last_line() -> None:
    result = tether("task", "submit", "--", "true")
    as_json = tether("task", "submit", "--output", "json", "--", "true")

    assert result.code == 0
    assert result.out.splitlines()[-1] == "task_1"
    assert json.loads(as_json.out)["id"] == "task_1"


@pytest.mark.parametrize(
    ("state", "exit_code", "status"),
    [("succeeded", 0, 0), ("failed", 3, 3), ("running", None, 124), ("queued", None, 124)],
)
def test_submit_with_wait_exits_with_the_tasks_status_or_124_when_the_wait_ran_out(
    state: str, exit_code: int | None, status: int
) -> None:
    client = FakeClient(task=task_view(state=TaskState(state), exit_code=exit_code))
    result = tether("task", "submit", "--wait", "30", "--", "true", client=client)
    assert result.code == status, result.err
    assert client.waits == [30.0]
    assert result.out.splitlines()[-1] == "task_1"
    # Without --wait: no wait asked, and 0 whatever the state.
    assert tether("task", "submit", "--", "true", client=client).code == 0
    assert client.waits == [30.0, None]


def test_a_task_names_its_app_and_env_with_app_and_app_env() -> None:
    client = FakeClient()
    result = tether(
        "task",
        "submit",
        "--app",
        "checkout",
        "--app-env",
        "prod",
        "--env",
        "A=1",
        "--",
        "true",
        client=client,
    )
    assert result.code == 0, result.err
    sent = client.submitted[-1]
    assert isinstance(sent.payload, ShellPayload)
    assert (sent.app, sent.env, sent.payload.env) == ("checkout", "prod", {"A": "1"})

    half = tether("task", "submit", "--app", "checkout", "--", "true", client=client)
    assert half.code == 2
    assert half.err.splitlines()[-1].startswith(
        "error: --app and --app-env go together: give both or neither"
    )


def test_task_list_and_deployments_pass_their_filters() -> None:
    client = FakeClient()
    assert tether("task", "list", "--app", "a", "--app-env", "e", client=client).code == 0
    result = tether(
        "deployments",
        "--app",
        "checkout",
        "--env",
        "prod",
        "--service",
        "web",
        "--status",
        "succeeded",
        client=client,
    )
    assert result.code == 0, result.err
    assert client.listed == [
        {"app": "a", "env": "e"},
        {"app": "checkout", "env": "prod", "service": "web", "status": "succeeded"},
    ]
    header, row = result.out.splitlines()[:2]
    assert header.split()[:4] == ["WHEN", "APP", "ENV", "SERVICE"]
    assert row.split()[1:3] == ["checkout", "prod"]


def test_logs_pages_until_nothing_is_new() -> None:
    pages = [
        LogPage(
            lines=[log(0, "a").line, log(1, "b", "stderr").line], cursor="1:1", state="running"
        ),
        LogPage(lines=[log(2, "c").line], cursor="1:2", state=TaskState.SUCCEEDED),
        LogPage(lines=[], cursor="1:2", state=TaskState.SUCCEEDED),
    ]
    client = FakeClient(pages=pages)

    result = tether("task", "logs", "task_1", client=client)

    assert (result.code, result.out, result.err) == (0, "a\nc\n", "b\n")
    assert client.afters == [None, "1:1", "1:2"]


# --- tokens and errors -------------------------------------------------------------------


def test_token_create_prints_the_token_alone_on_the_last_line() -> None:
    result = tether("token", "create", "build-01")

    assert result.code == 0
    assert result.out.splitlines()[-1] == "dtk_abc123"
    assert "shown once" in result.err


def test_a_bad_token_name_is_a_usage_error() -> None:
    assert tether("token", "create", "-bad name").code == 2


def test_token_list_as_json_keeps_the_api_shape() -> None:
    data = json.loads(tether("--output", "json", "token", "list").out)

    assert data == {
        "tokens": [
            {
                "id": "tok_1",
                "name": "ci",
                "created_at": "1970-01-01T00:00:01.000Z",
                "revoked_at": None,
                "scope": None,
            }
        ]
    }


def test_token_create_sends_its_scope_and_selectors() -> None:
    client = FakeClient()

    result = tether(
        "token",
        "create",
        "prod-hosts",
        "--scope",
        "checkout/prod",
        "--scope-env-type",
        "production",
        "--selector",
        "prod-pool",
        client=client,
    )

    assert result.code == 0
    (sent,) = client.token_requests
    assert sent is not None
    assert (sent.scope, sent.scope_env_types, sent.selectors) == (
        ["checkout/prod"],
        ["production"],
        ["prod-pool"],
    )


def test_token_create_without_flags_is_account_wide() -> None:
    client = FakeClient()

    assert tether("token", "create", "ci", client=client).code == 0
    (sent,) = client.token_requests
    assert sent is not None
    assert (sent.scope, sent.scope_env_types, sent.selectors) == ([], [], None)


def test_an_empty_selector_is_a_usage_error() -> None:
    result = tether("token", "create", "ci", "--selector", "")

    assert result.code == 2
    assert "--selector" in result.err


def test_an_api_error_exits_1_with_status_and_message() -> None:
    client = FakeClient(fail=ApiError(404, "not_found", "no task task_9"))

    result = tether("task", "get", "task_9", client=client)

    assert result.code == 1
    assert result.err == "error: HTTP 404 not_found: no task task_9\n"


def test_a_rejected_key_says_where_the_key_comes_from() -> None:
    client = FakeClient(fail=ApiError(401, "unauthorized", "bad API key"))

    result = tether("task", "list", client=client)

    assert result.code == 1
    assert "TETHER_API_KEY" in result.err
    assert "tk_secret_key" not in result.err


def test_an_unreachable_manager_exits_3_and_says_where_the_url_came_from() -> None:
    client = FakeClient(fail=ConnectionFailed("cannot connect to https://x (refused)"))

    result = tether("task", "list", client=client)

    assert (result.code, result.err) == (
        3,
        "error: cannot connect to https://x (refused) "
        "(URL from the default: is the manager running there?)\n",
    )


def test_task_list_since_takes_a_duration_ago() -> None:
    from manager.client.cli.context import parse_when

    assert abs(parse_when("2h") - (time.time() - 7200)) < 5


def test_task_list_since_takes_an_iso_time() -> None:
    from manager.client.cli.context import parse_when

    assert parse_when("2026-11-22T10:00:00+00:00") == 1795341600.0


def test_task_list_since_refuses_nonsense() -> None:
    import argparse

    from manager.client.cli.context import parse_when

    with pytest.raises(argparse.ArgumentTypeError, match="ISO time"):
        parse_when("yesterday-ish")
