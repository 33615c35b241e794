"""install-service / uninstall-service with --root: exactly these files, these modes."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from delegate import cli as delegate_cli
from delegate import exit_codes
from delegate.config import resolve
from manager import cli as manager_cli
from shared import service_install as svc

BIN = Path(sys.executable).parent
URL = "https://manager.example.com:8443"
TOKEN = "tok_" + "b" * 40


def files_under(root: Path) -> dict[str, int]:
    """Every file (not directory) under root, as relative path -> permission bits."""
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if not p.is_dir()
    }


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


def delegate(*argv: str) -> int:
    return delegate_cli.main(list(argv))


def install_args(root: Path, token_file: Path, *extra: str) -> list[str]:
    return [
        "install-service",
        "--root",
        str(root),
        "--manager-url",
        URL,
        "--token-file",
        str(token_file),
        "--executable",
        str(BIN / "tether-delegate"),
        *extra,
    ]


def test_delegate_install_writes_exactly_its_files_with_their_modes(
    tmp_path: Path, token_file: Path, ca_file: Path
) -> None:
    root = tmp_path / "root"
    extra = ["--ca-file", str(ca_file), "--name", "build-01", "--selector", "linux,eu"]
    assert delegate(*install_args(root, token_file, *extra, "--selector", "gpu")) == 0
    assert files_under(root) == {
        "etc/systemd/system/tether-delegate.service": 0o644,
        "etc/systemd/system/tether-task-launcher.service": 0o644,
        "etc/systemd/system/tether-task-launcher.socket": 0o644,
        "etc/sysusers.d/tether-delegate.conf": 0o644,
        "etc/tmpfiles.d/tether-delegate.conf": 0o644,
        "etc/tether/delegate.yaml": 0o600,
        "etc/tether/credentials/delegate-token": 0o600,
        "etc/tether/delegate-ca.pem": 0o644,
    }
    assert stat.S_IMODE((root / "etc/tether/credentials").stat().st_mode) == 0o700
    assert (root / "etc/tether/credentials/delegate-token").read_text() == TOKEN + "\n"
    assert (root / "etc/tether/delegate-ca.pem").read_bytes() == ca_file.read_bytes()
    config = yaml.safe_load((root / "etc/tether/delegate.yaml").read_text())
    assert config == {
        "manager_url": URL,
        "ca_file": "/etc/tether/delegate-ca.pem",
        "name": "build-01",
        "selectors": ["linux", "eu", "gpu"],
        "data_dir": "/var/lib/tether-delegate",
        "work_dir": "/var/lib/tether-delegate-tasks",
        "task_users": [f"tether-task-{i}" for i in range(4)],
        "token_file": "/etc/tether/credentials/delegate-token",
        "launcher_socket": "/run/tether-task-launcher.sock",
    }
    tmpfiles = (root / "etc/tmpfiles.d/tether-delegate.conf").read_text()
    assert "d /var/lib/tether-delegate-tasks 0711 tether tether -" in tmpfiles
    sysusers = (root / "etc/sysusers.d/tether-delegate.conf").read_text()
    assert 'u tether - "Tether delegate" /var/lib/tether-delegate' in sysusers
    # One account per slot, each with its own group (sysusers' "-"), none the delegate's.
    accounts = [line.split()[1] for line in sysusers.splitlines() if line.startswith("u ")]
    assert accounts == ["tether", *(f"tether-task-{i}" for i in range(4))]


def test_delegate_install_makes_one_task_user_per_slot_with_the_prefix_asked(
    tmp_path: Path, token_file: Path
) -> None:
    root = tmp_path / "root"
    extra = ("--max-tasks", "2", "--task-user-prefix", "ci-task-")
    assert delegate(*install_args(root, token_file, *extra)) == 0
    sysusers = (root / "etc/sysusers.d/tether-delegate.conf").read_text()
    assert [line.split()[1] for line in sysusers.splitlines() if line.startswith("u ")] == [
        "tether",
        "ci-task-0",
        "ci-task-1",
    ]
    env = {"TETHER_TOKEN_FILE": str(root / "etc/tether/credentials/delegate-token")}
    config = resolve({}, env, root / "etc/tether/delegate.yaml")
    assert config.task_users == ("ci-task-0", "ci-task-1")
    assert not config.shared_user


@pytest.mark.parametrize("prefix", ["", "9task-", "task user-", "x" * 40])
def test_delegate_install_refuses_a_task_user_prefix_that_makes_no_account_name(
    tmp_path: Path, token_file: Path, prefix: str
) -> None:
    argv = install_args(tmp_path / "root", token_file, "--task-user-prefix", prefix)
    assert delegate(*argv) == exit_codes.EXIT_CONFIG
    assert not (tmp_path / "root").exists()


def test_delegate_config_as_installed_is_accepted_by_the_delegate(
    tmp_path: Path, token_file: Path
) -> None:
    root = tmp_path / "root"
    assert delegate(*install_args(root, token_file, "--max-tasks", "2")) == 0
    # As the unit runs it: the token from the credential that TETHER_TOKEN_FILE names.
    env = {"TETHER_TOKEN_FILE": str(root / "etc/tether/credentials/delegate-token")}
    config = resolve({}, env, root / "etc/tether/delegate.yaml")
    assert config.manager_url == URL
    assert config.token == TOKEN
    assert config.max_tasks == 2
    assert config.data_dir == Path("/var/lib/tether-delegate")
    assert config.work_root == Path("/var/lib/tether-delegate-tasks")
    assert config.task_users == ("tether-task-0", "tether-task-1")


def test_delegate_uninstall_removes_every_file_it_wrote(
    tmp_path: Path, token_file: Path, ca_file: Path
) -> None:
    root = tmp_path / "root"
    assert delegate(*install_args(root, token_file, "--ca-file", str(ca_file))) == 0
    assert delegate("uninstall-service", "--root", str(root)) == 0
    assert files_under(root) == {}
    assert not (root / "etc/tether").exists()


def test_delegate_uninstall_keeps_what_others_put_in_etc_tether(
    tmp_path: Path, token_file: Path
) -> None:
    root = tmp_path / "root"
    assert delegate(*install_args(root, token_file)) == 0
    other = root / "etc/tether/other.yaml"
    other.write_text("kept: true\n")
    # Its mode set here: write_text's follows the process umask, which an earlier test in
    # this process may have narrowed (the manager's main sets 077).
    other.chmod(0o644)
    assert delegate("uninstall-service", "--root", str(root)) == 0
    assert files_under(root) == {"etc/tether/other.yaml": 0o644}


def test_reinstall_replaces_the_token_in_place(tmp_path: Path, token_file: Path) -> None:
    root = tmp_path / "root"
    assert delegate(*install_args(root, token_file)) == 0
    token_file.write_text("tok_new\n")
    assert delegate(*install_args(root, token_file)) == 0
    credential = root / "etc/tether/credentials/delegate-token"
    assert credential.read_text() == "tok_new\n"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600


def test_token_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_TOKEN", TOKEN)
    root = tmp_path / "root"
    argv = ["install-service", "--root", str(root), "--manager-url", URL]
    assert delegate(*argv, "--executable", "/usr/bin/tether-delegate") == 0
    assert (root / "etc/tether/credentials/delegate-token").read_text() == TOKEN + "\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--manager-url", "http://manager:8443"], "https://"),
        (["--user", "root"], "unprivileged"),
        (["--ca-file", "/nonexistent/ca.pem"], "cannot read"),
    ],
)
def test_delegate_install_refuses_bad_options_and_writes_nothing(
    tmp_path: Path,
    token_file: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    root = tmp_path / "root"
    assert delegate(*install_args(root, token_file), *extra) == exit_codes.EXIT_CONFIG
    assert message in capsys.readouterr().err
    assert not root.exists()


def test_delegate_install_refuses_a_token_with_spaces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "token"
    bad.write_text("not a token\n")
    assert delegate(*install_args(tmp_path / "root", bad)) == exit_codes.EXIT_CONFIG
    assert "one word" in capsys.readouterr().err


def test_manager_install_and_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    exe = str(BIN / "tether-manager")
    argv = ["install-service", "--root", str(root), "--executable", exe]
    assert manager_cli.main([*argv, "--listen", "10.0.0.5:9443", "--data-dir", "/var/lib/tm"]) == 0
    assert files_under(root) == {"etc/systemd/system/tether-manager.service": 0o644}
    unit = (root / "etc/systemd/system/tether-manager.service").read_text()
    assert f"ExecStart={exe} serve --data-dir /var/lib/tm --listen 10.0.0.5:9443 " in unit
    assert "\nStateDirectory=tm\n" in unit
    assert manager_cli.main(["uninstall-service", "--root", str(root)]) == 0
    assert files_under(root) == {}


def test_manager_data_dir_must_be_a_state_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["install-service", "--root", str(tmp_path), "--data-dir", "/srv/tether"]
    assert manager_cli.main(argv) == manager_cli.EXIT_USAGE
    assert "/var/lib" in capsys.readouterr().err


class Recorder:
    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(tuple(argv))
        return 1 if self.fail in argv else 0


def plan() -> svc.Plan:
    return svc.delegate_plan(manager_url=URL, token=TOKEN, command=["/usr/bin/tether-delegate"])


def test_live_install_creates_the_user_then_reloads_and_starts(tmp_path: Path) -> None:
    runner = Recorder()
    svc.install(plan(), tmp_path, activate=True, runner=runner)
    assert runner.calls == [
        ("systemd-sysusers", "/etc/sysusers.d/tether-delegate.conf"),
        ("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/tether-delegate.conf"),
        ("systemctl", "daemon-reload"),
        # The launcher's socket with the delegate: the delegate needs it from its start.
        ("systemctl", "enable", "--now", "tether-task-launcher.socket", "tether-delegate.service"),
    ]


def test_live_uninstall_stops_first_and_reloads_last(tmp_path: Path) -> None:
    svc.install(plan(), tmp_path, activate=False)
    runner = Recorder()
    svc.uninstall(svc.delegate_removal(), tmp_path, activate=True, runner=runner)
    assert runner.calls == [
        (
            "systemctl", "disable", "--now", "tether-delegate.service",
            "tether-task-launcher.service", "tether-task-launcher.socket",
        ),
        ("systemctl", "daemon-reload"),
    ]  # fmt: skip
    assert files_under(tmp_path) == {}


def test_with_root_no_systemctl_runs(tmp_path: Path) -> None:
    runner = Recorder()
    svc.install(plan(), tmp_path, runner=runner)
    svc.uninstall(svc.delegate_removal(), tmp_path, runner=runner)
    assert runner.calls == []


def test_a_failing_systemctl_is_reported(tmp_path: Path) -> None:
    with pytest.raises(svc.CommandFailed, match="enable --now"):
        svc.install(plan(), tmp_path, activate=True, runner=Recorder(fail="enable"))


def test_a_failed_start_points_at_the_journal(tmp_path: Path) -> None:
    with pytest.raises(svc.CommandFailed, match=r"journalctl -u tether-delegate\.service"):
        svc.install(plan(), tmp_path, activate=True, runner=Recorder(fail="enable"))


def test_live_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    runner = Recorder()
    with pytest.raises(svc.InstallError, match="run as root, or pass --root"):
        svc.install(plan(), None, runner=runner)
    with pytest.raises(svc.InstallError, match="run as root"):
        svc.uninstall(svc.delegate_removal(), None, runner=runner)
    assert runner.calls == []
