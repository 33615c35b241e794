"""``install-service`` and ``uninstall-service`` for both commands (Linux, systemd).

Installing is two steps: :func:`delegate_plan` / :func:`manager_plan` decide every file to
write, with its content and mode (plain data: tests read it), then :func:`install` writes
them under a root and, on the live system only, asks systemd to pick them up. ``root`` is
``/`` on the live system; with ``--root DIR`` every file goes under DIR and systemctl is
never run, for packaging and for tests.

The unit templates ship inside the package (``shared/units/``), identical to the reference
copies in ``deploy/systemd/``; each is a working unit for a package that installs the
commands in /usr/bin, and the installer only rewrites the lines that depend on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

import yaml

__all__ = [
    "DELEGATE_CONFIG",
    "DELEGATE_STATE_DIR",
    "DELEGATE_TOKEN",
    "DELEGATE_UNIT",
    "LAUNCHER_SOCKET",
    "LAUNCHER_SOCKET_PATH",
    "LAUNCHER_UNIT",
    "MANAGER_UNIT",
    "CommandFailed",
    "InstallError",
    "Plan",
    "PlannedFile",
    "delegate_plan",
    "delegate_removal",
    "find_executable",
    "install",
    "manager_plan",
    "manager_removal",
    "read_input",
    "uninstall",
    "unit_template",
]

ETC = PurePosixPath("/etc/tether")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
DELEGATE_UNIT = "tether-delegate.service"
MANAGER_UNIT = "tether-manager.service"
DELEGATE_CONFIG = ETC / "delegate.yaml"
DELEGATE_TOKEN = ETC / "credentials" / "delegate-token"
DELEGATE_CA = ETC / "delegate-ca.pem"
DELEGATE_SYSUSERS = PurePosixPath("/etc/sysusers.d/tether-delegate.conf")
DELEGATE_TMPFILES = PurePosixPath("/etc/tmpfiles.d/tether-delegate.conf")
# The task launcher: the root-side service that starts tasks as their slots' users.
LAUNCHER_UNIT = "tether-task-launcher.service"
LAUNCHER_SOCKET = "tether-task-launcher.socket"
LAUNCHER_SOCKET_PATH = PurePosixPath("/run/tether-task-launcher.sock")
DELEGATE_STATE_DIR = PurePosixPath("/var/lib/tether-delegate")
# Tasks' private directories: outside the state dir, which task users must not enter.
DELEGATE_WORK_DIR = PurePosixPath("/var/lib/tether-delegate-tasks")
DEFAULT_MAX_TASKS = 4
STATE_ROOT = PurePosixPath("/var/lib")
# ProtectHome=yes hides these; a command installed under one needs read-only instead.
_HOME_DIRS = ("/home", "/root", "/run/user")

Runner = Callable[[Sequence[str]], int]


class InstallError(Exception):
    """The service cannot be installed as asked; the command exits with status 2."""


class CommandFailed(Exception):
    """A systemd command failed on the live system; the command exits with status 1."""


@dataclass(frozen=True)
class PlannedFile:
    path: PurePosixPath  # absolute, as on the target system
    content: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Plan:
    unit: str
    # Everything install writes, in order; uninstall removes the same paths.
    files: tuple[PlannedFile, ...]
    # Directories install may have created, removed by uninstall when left empty.
    dirs: tuple[tuple[PurePosixPath, int], ...]
    # Run once the files are in place, before daemon-reload (live system only).
    before_start: tuple[tuple[str, ...], ...] = ()
    # Said after uninstall: what it keeps on purpose.
    kept: str = ""
    # Enabled and started with ``unit``, before it (a socket it needs); stopped after it.
    also: tuple[str, ...] = ()


# -- templates ------------------------------------------------------------------------------


def unit_template(unit: str) -> str:
    """The unit file shipped as package data; the repository's copy when run from a tree
    installed without it."""
    packaged = resources.files("shared").joinpath("units", unit)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "deploy" / "systemd" / unit).read_text(
        encoding="utf-8"
    )


def _set(text: str, key: str, value: str) -> str:
    """Replace the value of the one ``key=`` line of a unit file."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
    if len(hits) != 1:
        raise AssertionError(f"unit template: expected one {key}= line, found {len(hits)}")
    lines[hits[0]] = f"{key}={value}\n"
    return "".join(lines)


def _insert_after(text: str, key: str, new_lines: Iterable[str]) -> str:
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
    if not hits:
        raise AssertionError(f"unit template: no {key}= line")
    at = hits[-1] + 1
    lines[at:at] = [f"{line}\n" for line in new_lines]
    return "".join(lines)


def _unit_word(arg: str) -> str:
    """One word of an Exec line: specifiers (%) and variables ($) taken literally."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c.isspace() or c in "\"'\\;" for c in escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _exec_line(command: Sequence[str], args: Sequence[str]) -> str:
    # The fixed arguments are written by us and may use specifiers such as %d.
    return " ".join([*(_unit_word(w) for w in command), *args])


def find_executable(name: str) -> list[str]:
    """How systemd should start ``name``: the script next to this interpreter (a venv's
    bin/), else the one on PATH, else this interpreter running the module."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return [str(here.absolute())]
    found = shutil.which(name)
    if found:
        return [str(Path(found).absolute())]
    module = {
        "tether-delegate": "delegate.cli",
        "tether-manager": "manager.cli",
        "tether-task-launcher": "delegate.launcher.cli",
    }[name]
    return [str(Path(sys.executable).absolute()), "-m", module]


def _sibling(command: Sequence[str], name: str) -> list[str]:
    """How to start ``name`` installed alongside ``command`` (same directory, or the same
    interpreter running its module)."""
    if len(command) == 1:
        return [str(PurePosixPath(command[0]).with_name(name))]
    return find_executable(name)


def read_input(path: Path) -> bytes:
    """A file named on the command line (token, CA): unreadable is a usage error."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from None


def _protect_home(command: Sequence[str]) -> str:
    exe = command[0]
    if any(exe == d or exe.startswith(d + "/") for d in _HOME_DIRS):
        return "read-only"
    return "yes"


def _apply_command(text: str, command: Sequence[str], args: Sequence[str]) -> str:
    text = _set(text, "ExecStart", _exec_line(command, args))
    return _set(text, "ProtectHome", _protect_home(command))


# -- plans ----------------------------------------------------------------------------------


def delegate_plan(
    *,
    manager_url: str,
    token: str,
    command: Sequence[str],
    launcher_command: Sequence[str] | None = None,
    user: str = "tether",
    ca_pem: bytes | None = None,
    name: str | None = None,
    selectors: Sequence[str] = (),
    max_tasks: int | None = None,
    task_user_prefix: str = "tether-task-",
) -> Plan:
    url = manager_url.rstrip("/")
    if not url.startswith("https://"):
        raise InstallError(f"the manager URL must start with https:// (got {url!r})")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise InstallError("the token must be one word (the line `token create` printed)")
    if ca_pem is not None and b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise InstallError("the CA file holds no PEM certificate")
    if not user or user == "root" or not all(c.isalnum() or c in "-_." for c in user):
        raise InstallError(f"--user must name an unprivileged account (got {user!r})")
    slots = max_tasks if max_tasks is not None else DEFAULT_MAX_TASKS
    task_users = [f"{task_user_prefix}{i}" for i in range(slots)]
    # sysusers.d and useradd take at most 31 characters, a letter or _ first.
    if not task_user_prefix[:1].isalpha() or not all(
        c.isalnum() or c in "-_" for c in task_user_prefix
    ):
        raise InstallError(
            f"--task-user-prefix must be letters, digits, - or _ (got {task_user_prefix!r})"
        )
    if any(len(name) > 31 for name in task_users) or user in task_users:
        raise InstallError(
            "--task-user-prefix must give names of at most 31 characters, not --user"
        )

    text = unit_template(DELEGATE_UNIT)
    text = _apply_command(text, command, ["run", "--config", "%d/config", "--log-format", "json"])
    text = _set(text, "User", user)
    text = _set(text, "Group", user)
    launcher_args = [
        "--client-user", user,
        "--task-users", ",".join(task_users),
        "--work-dir", str(DELEGATE_WORK_DIR),
        "--log-format", "json",
    ]  # fmt: skip
    launcher = _apply_command(
        unit_template(LAUNCHER_UNIT),
        launcher_command or _sibling(command, "tether-task-launcher"),
        launcher_args,
    )
    socket_unit = unit_template(LAUNCHER_SOCKET)
    socket_unit = _set(socket_unit, "ListenSequentialPacket", str(LAUNCHER_SOCKET_PATH))
    socket_unit = _set(socket_unit, "SocketUser", user)
    socket_unit = _set(socket_unit, "SocketGroup", user)

    config: dict[str, object] = {"manager_url": url}
    if ca_pem is not None:
        config["ca_file"] = str(DELEGATE_CA)
    if name:
        config["name"] = name
    if selectors:
        config["selectors"] = list(dict.fromkeys(selectors))
    if max_tasks is not None:
        config["max_tasks"] = max_tasks
    config["data_dir"] = str(DELEGATE_STATE_DIR)
    config["work_dir"] = str(DELEGATE_WORK_DIR)
    config["task_users"] = task_users
    config["token_file"] = str(DELEGATE_TOKEN)
    config["launcher_socket"] = str(LAUNCHER_SOCKET_PATH)
    config_text = (
        "# Written by `tether-delegate install-service`. The service reads a copy that\n"
        "# systemd makes at each start (LoadCredential=), so restart it after an edit.\n"
        "# The token lives in its own file; the service's TETHER_TOKEN_FILE points at it.\n"
        + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    )
    sysusers = (
        "# The account tether-delegate.service runs as.\n"
        f'u {user} - "Tether delegate" {DELEGATE_STATE_DIR} /usr/sbin/nologin\n'
        "# One account per task slot, each with a group of its own: a task runs as its\n"
        "# slot's account, so it can read neither the delegate's files nor another task's.\n"
        + "".join(
            f'u {name} - "Tether task slot {i}" / /usr/sbin/nologin\n'
            for i, name in enumerate(task_users)
        )
    )
    # Made before either service starts: the launcher's sandbox opens it to tasks
    # (ReadWritePaths=), which needs it to exist, and it must be the delegate's.
    tmpfiles = (
        "# Tasks' directories: the delegate's, passable (not listable) by the task users.\n"
        f"d {DELEGATE_WORK_DIR} 0711 {user} {user} -\n"
    )
    files = [
        PlannedFile(UNIT_DIR / DELEGATE_UNIT, text.encode(), 0o644),
        PlannedFile(UNIT_DIR / LAUNCHER_UNIT, launcher.encode(), 0o644),
        PlannedFile(UNIT_DIR / LAUNCHER_SOCKET, socket_unit.encode(), 0o644),
        PlannedFile(DELEGATE_SYSUSERS, sysusers.encode(), 0o644),
        PlannedFile(DELEGATE_TMPFILES, tmpfiles.encode(), 0o644),
        PlannedFile(DELEGATE_CONFIG, config_text.encode(), 0o600),
        PlannedFile(DELEGATE_TOKEN, (token + "\n").encode(), 0o600),
    ]
    if ca_pem is not None:
        # A copy: the file given is often in a home directory, which the sandbox hides.
        files.append(PlannedFile(DELEGATE_CA, ca_pem, 0o644))
    return Plan(
        unit=DELEGATE_UNIT,
        files=tuple(files),
        dirs=((ETC, 0o755), (DELEGATE_TOKEN.parent, 0o700)),
        before_start=(
            ("systemd-sysusers", str(DELEGATE_SYSUSERS)),
            ("systemd-tmpfiles", "--create", str(DELEGATE_TMPFILES)),
        ),
        also=(LAUNCHER_SOCKET,),
    )


def delegate_removal() -> Plan:
    """Every path a delegate install may have written, whatever its options were."""
    paths = (
        UNIT_DIR / DELEGATE_UNIT,
        UNIT_DIR / LAUNCHER_UNIT,
        UNIT_DIR / LAUNCHER_SOCKET,
        DELEGATE_SYSUSERS,
        DELEGATE_TMPFILES,
        DELEGATE_CONFIG,
        DELEGATE_TOKEN,
        DELEGATE_CA,
    )
    return Plan(
        unit=DELEGATE_UNIT,
        files=tuple(PlannedFile(p) for p in paths),
        dirs=((ETC, 0o755), (DELEGATE_TOKEN.parent, 0o700)),
        also=(LAUNCHER_UNIT, LAUNCHER_SOCKET),
        kept=(
            f"kept {DELEGATE_STATE_DIR} (this delegate's key and spool), {DELEGATE_WORK_DIR}"
            " and the accounts (the delegate's and its task users'); remove them to forget"
            " this delegate"
        ),
    )


def manager_plan(
    *,
    command: Sequence[str],
    listen: str = "0.0.0.0:8443",
    data_dir: PurePosixPath = STATE_ROOT / "tether",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_names: Sequence[str] = (),
) -> Plan:
    if bool(tls_cert) != bool(tls_key):
        raise InstallError("--tls-cert and --tls-key go together")
    if tls_names and tls_cert:
        raise InstallError("--tls-san names the self-made certificate; not with --tls-cert")
    for given in (tls_cert, tls_key):
        if given is not None and not given.is_file():
            raise InstallError(f"{given} does not exist")
    if data_dir.parent != STATE_ROOT or data_dir.name in ("", ".", ".."):
        # StateDirectory= only names directories directly under /var/lib.
        raise InstallError(f"--data-dir must be a directory in {STATE_ROOT} (got {data_dir})")
    args = ["serve", "--data-dir", _unit_word(str(data_dir)), "--listen", _unit_word(listen)]
    text = unit_template(MANAGER_UNIT)
    if tls_cert and tls_key:
        # systemd reads them as root and hands the service copies, so the files can stay
        # root-only wherever the operator keeps them.
        args += ["--tls-cert", "%d/tls-cert", "--tls-key", "%d/tls-key"]
        text = _insert_after(
            text,
            "UMask",
            [
                f"LoadCredential=tls-cert:{_unit_word(str(tls_cert.absolute()))}",
                f"LoadCredential=tls-key:{_unit_word(str(tls_key.absolute()))}",
            ],
        )
    for name in tls_names:
        args += ["--tls-san", _unit_word(name)]
    args += ["--log-format", "json"]
    text = _apply_command(text, command, args)
    text = _set(text, "StateDirectory", data_dir.name)
    text = _set(text, "WorkingDirectory", str(data_dir))
    return Plan(
        unit=MANAGER_UNIT,
        files=(PlannedFile(UNIT_DIR / MANAGER_UNIT, text.encode(), 0o644),),
        dirs=(),
    )


def manager_removal() -> Plan:
    return Plan(
        unit=MANAGER_UNIT,
        files=(PlannedFile(UNIT_DIR / MANAGER_UNIT),),
        dirs=(),
        kept="kept the data directory (the store, keys and certificates)",
    )


# -- applying a plan ------------------------------------------------------------------------


def _under(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def _write(target: Path, content: bytes, mode: int) -> None:
    """Atomically, and with ``mode`` from the first byte (never briefly world-readable)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), check=False).returncode


def install(
    plan: Plan,
    root: Path | None = None,
    *,
    activate: bool | None = None,
    runner: Runner = _run,
) -> list[Path]:
    """Write the plan's files under ``root`` (the live system when None) and, when
    ``activate`` (by default: on the live system only), create the account, reload systemd
    and enable and start the unit."""
    _check_privileges(root)
    base = root if root is not None else Path("/")
    for directory, mode in plan.dirs:
        target = _under(base, directory)
        if not target.is_dir():
            target.mkdir(parents=True, mode=mode)
            os.chmod(target, mode)  # exact, whatever the umask
    written = []
    for f in plan.files:
        target = _under(base, f.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, f.content, f.mode)
        written.append(target)
    if activate if activate is not None else root is None:
        for argv in plan.before_start:
            _check(runner, argv)
        _check(runner, ("systemctl", "daemon-reload"))
        try:
            _check(runner, ("systemctl", "enable", "--now", *plan.also, plan.unit))
        except CommandFailed as exc:
            # Type=notify: a start that never reported READY fails here, after its timeout.
            raise CommandFailed(f"{exc}; see `journalctl -u {plan.unit}`") from None
    return written


def uninstall(
    plan: Plan,
    root: Path | None = None,
    *,
    activate: bool | None = None,
    runner: Runner = _run,
) -> list[Path]:
    """Stop and disable the unit (when ``activate``, by default on the live system only),
    then remove the plan's files, and the directories it made when they are left empty.
    Returns what was removed."""
    _check_privileges(root)
    base = root if root is not None else Path("/")
    live = activate if activate is not None else root is None
    if live:
        # Not fatal: the unit may be stopped already, or never have been loaded.
        runner(("systemctl", "disable", "--now", plan.unit, *plan.also))
    removed = []
    for f in plan.files:
        target = _under(base, f.path)
        if target.exists() or target.is_symlink():
            target.unlink()
            removed.append(target)
    for directory, _mode in sorted(plan.dirs, key=lambda d: len(d[0].parts), reverse=True):
        target = _under(base, directory)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
            removed.append(target)
    if live:
        _check(runner, ("systemctl", "daemon-reload"))
    return removed


def _check_privileges(root: Path | None) -> None:
    if root is None and os.geteuid() != 0:
        raise InstallError("installing a service changes /etc: run as root, or pass --root DIR")


def _check(runner: Runner, argv: Sequence[str]) -> None:
    code = runner(argv)
    if code != 0:
        raise CommandFailed(f"`{shlex.join(argv)}` failed with status {code}")
