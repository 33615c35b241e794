"""The custom script provider, with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from pathlib import Path

import psutil
import pytest

from delegate.secrets.base import ProviderConfig, SecretError, SecretRef
from delegate.secrets.custom import MAX_VALUE_BYTES, CustomScript
from delegate.secrets.registry import make_provider


def inline(text: str, credentials: dict[str, str] | None = None, **settings: str) -> CustomScript:
    return CustomScript(
        ProviderConfig(
            kind="custom", settings={"inline": text, **settings}, credentials=credentials or {}
        ),
        grace=0.2,
    )


def script_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fetch.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_stdout_is_the_value_without_one_trailing_newline() -> None:
    value = await inline("printf 'line1\\nline2\\n\\n'").fetch(SecretRef(path="p"))
    assert value == b"line1\nline2\n"


async def test_value_without_a_newline_is_kept_whole() -> None:
    assert await inline("printf 'abc'").fetch(SecretRef(path="p")) == b"abc"


async def test_script_file_is_run(tmp_path: Path) -> None:
    path = script_file(tmp_path, 'echo "from-file:$TETHER_SECRET_PATH"\n')
    provider = CustomScript(ProviderConfig(kind="custom", settings={"script": str(path)}))
    assert await provider.fetch(SecretRef(path="db/main")) == b"from-file:db/main"


async def test_reference_and_credentials_are_in_the_environment() -> None:
    provider = inline(
        'echo "$TETHER_SECRET_PATH|$TETHER_SECRET_KEY|$TETHER_SECRET_VERSION"'
        '"|$TETHER_CRED_API_TOKEN"',
        credentials={"api_token": "cred-value"},
    )
    value = await provider.fetch(SecretRef(path="db/main", key="password", version="7"))
    assert value == b"db/main|password|7|cred-value"


async def test_absent_key_and_version_are_empty_so_set_u_scripts_work() -> None:
    provider = inline('set -u; echo "[$TETHER_SECRET_KEY][$TETHER_SECRET_VERSION]"')
    assert await provider.fetch(SecretRef(path="p")) == b"[][]"


async def test_the_delegates_own_tether_variables_are_not_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TETHER_DELEGATE_TOKEN", "delegate-token")
    monkeypatch.setenv("TETHER_TEST_OTHER", "other")
    value = await inline('echo "${TETHER_DELEGATE_TOKEN:-unset}"').fetch(SecretRef(path="p"))
    assert value == b"unset"


async def test_stdin_is_at_end_of_file() -> None:
    assert await inline("cat; echo done").fetch(SecretRef(path="p")) == b"done"


async def test_failure_reports_exit_code_and_stderr_length_not_its_text() -> None:
    provider = inline("echo 'hunter2-value' >&2; exit 3")
    with pytest.raises(SecretError) as info:
        await provider.fetch(SecretRef(path="db/main"))
    message = str(info.value)
    assert "exited with code 3" in message
    assert "stderr: 14 bytes" in message
    assert "'db/main'" in message
    assert "hunter2" not in message


async def test_killed_script_reports_the_signal() -> None:
    with pytest.raises(SecretError, match="was killed by signal 9"):
        await inline("kill -9 $$").fetch(SecretRef(path="p"))


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    provider = inline(f"sleep 60 & echo $! > {pid_file}; wait", timeout="0.5")
    with pytest.raises(SecretError, match=r"timed out after 0.5 s"):
        await provider.fetch(SecretRef(path="p"))
    assert _gone(int(pid_file.read_text()))


def _gone(pid: int) -> bool:
    """Dead or a zombie: reparented to init, which reaps it in its own time."""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE:
            proc.wait(timeout=5)  # SIGKILL was sent; this bounds the kernel's delivery
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


async def test_background_child_does_not_hold_the_fetch_open() -> None:
    # The sleep inherits stdout; the fetch must not wait for it to end.
    provider = inline("sleep 60 & echo quick-value", timeout="10")
    assert await provider.fetch(SecretRef(path="p")) == b"quick-value"


async def test_process_that_left_the_group_does_not_hold_the_fetch_open(tmp_path: Path) -> None:
    pid_file = tmp_path / "escaped.pid"
    provider = inline(f"setsid sleep 30 & echo $! > {pid_file}; echo escaped-value", timeout="10")
    try:
        assert await provider.fetch(SecretRef(path="p")) == b"escaped-value"
    finally:
        # Out of the group's reach by design; the test cleans up what it made.
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def test_output_over_the_limit_is_refused() -> None:
    provider = inline(f"head -c {MAX_VALUE_BYTES + 1} /dev/zero; sleep 60", timeout="10")
    with pytest.raises(SecretError, match=f"printed more than {MAX_VALUE_BYTES} bytes"):
        await provider.fetch(SecretRef(path="p"))


async def test_missing_script_cannot_start(tmp_path: Path) -> None:
    provider = CustomScript(
        ProviderConfig(kind="custom", settings={"script": str(tmp_path / "missing.sh")})
    )
    with pytest.raises(SecretError, match=r"cannot start script .*missing\.sh for 'p'"):
        await provider.fetch(SecretRef(path="p"))


@pytest.mark.parametrize("settings", [{}, {"script": "/bin/true", "inline": "true"}])
def test_exactly_one_of_script_and_inline_is_required(settings: dict[str, str]) -> None:
    with pytest.raises(SecretError, match="exactly one of"):
        CustomScript(ProviderConfig(kind="custom", settings=settings))


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_timeout_setting_must_be_positive(timeout: str) -> None:
    with pytest.raises(SecretError, match="'timeout' must be a positive number"):
        inline("true", timeout=timeout)


def test_credential_names_must_fit_an_environment_variable() -> None:
    with pytest.raises(SecretError, match="not usable in env") as info:
        inline("true", credentials={"api-token": "cred-value"})
    assert "cred-value" not in str(info.value)


async def test_check_accepts_an_executable_script(tmp_path: Path) -> None:
    path = script_file(tmp_path, "echo x\n")
    await CustomScript(ProviderConfig(kind="custom", settings={"script": str(path)})).check()


async def test_check_refuses_a_script_that_is_not_executable(tmp_path: Path) -> None:
    path = script_file(tmp_path, "echo x\n")
    path.chmod(0o644)
    provider = CustomScript(ProviderConfig(kind="custom", settings={"script": str(path)}))
    if os.access(path, os.X_OK):
        pytest.skip("running as a user that may execute anything")
    with pytest.raises(SecretError, match="is not executable"):
        await provider.check()


async def test_check_finds_the_inline_shell_on_path() -> None:
    await inline("true", shell="sh").check()


def test_registry_makes_a_custom_provider_and_refuses_unknown_kinds() -> None:
    assert isinstance(make_provider(ProviderConfig("custom", {"inline": "true"})), CustomScript)
    with pytest.raises(SecretError, match="unknown secret manager kind 'nope'"):
        make_provider(ProviderConfig("nope"))
