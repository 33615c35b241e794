"""Delegate configuration: flags win over the environment, the environment over the file."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from delegate.run.isolation import pool_names
from delegate.secrets.cache import DEFAULT_TTL
from shared.protocol import TaskType

__all__ = ["ConfigError", "DelegateConfig", "resolve"]

ENV = {
    "manager_url": "TETHER_MANAGER_URL",
    "token": "TETHER_TOKEN",
    "token_file": "TETHER_TOKEN_FILE",
    "ca_file": "TETHER_CA_FILE",
    "name": "TETHER_DELEGATE_NAME",
    "selectors": "TETHER_SELECTORS",
    "max_tasks": "TETHER_MAX_TASKS",
    "data_dir": "TETHER_DELEGATE_DATA_DIR",
    "client_cert": "TETHER_CLIENT_CERT",
    "client_key": "TETHER_CLIENT_KEY",
    "secret_cache_ttl": "TETHER_SECRET_CACHE_TTL",
    "shared_user": "TETHER_SHARED_USER",
    "task_users": "TETHER_TASK_USERS",
    "task_user_prefix": "TETHER_TASK_USER_PREFIX",
    "work_dir": "TETHER_WORK_DIR",
    "launcher_socket": "TETHER_LAUNCHER_SOCKET",
}
KEYS = set(ENV) | {"task_types", "log_level", "time_scale"}
DEFAULT_TASK_USER_PREFIX = "tether-task-"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class ConfigError(Exception):
    """The configuration cannot work; the delegate exits with status 2 and this message."""


@dataclass(frozen=True)
class DelegateConfig:
    manager_url: str
    token: str = field(repr=False)
    name: str
    data_dir: Path
    ca_file: Path | None = None
    selectors: tuple[str, ...] = ()
    max_tasks: int = 4
    task_types: tuple[TaskType, ...] = tuple(TaskType)
    log_level: str = "info"
    time_scale: float = 1.0
    # A client certificate for mTLS, when the manager or a proxy in front of it asks for one.
    client_cert: Path | None = None
    client_key: Path | None = None
    # Seconds a value from a customer's secret manager is kept in memory; 0: not at all.
    secret_cache_ttl: float = DEFAULT_TTL
    # Tasks run as this delegate's own user: an explicit opt-in, since a task can then read
    # the delegate's token, key and spool. Otherwise each slot has a task user of its own.
    shared_user: bool = False
    # One account per slot (max_tasks of them), in slot order.
    task_users: tuple[str, ...] = ()
    # Where tasks' private directories are made; None: <data_dir>/work (shared user only).
    work_dir: Path | None = None
    # The file the token was read from, if it was: checked to be the delegate's alone.
    token_file: Path | None = None
    # The task launcher's socket (tether-task-launcher.socket): tasks are started by it, and
    # this process needs no capability. None: it switches users itself (root), or cannot.
    launcher_socket: Path | None = None

    @property
    def work_root(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.data_dir / "work"


def _split(value: Any) -> tuple[str, ...]:
    items = list(value) if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(dict.fromkeys(s.strip() for s in items if str(s).strip()))


def resolve(
    flags: Mapping[str, Any], env: Mapping[str, str], config_file: Path | None
) -> DelegateConfig:
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise ConfigError(
                f"cannot read the config file {config_file}: {exc.strerror}; check --config"
            ) from None
        except yaml.YAMLError as exc:
            # One line: the YAML error's own text spans several.
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"{config_file} is not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file}: expected a mapping of settings")
        unknown = set(loaded) - KEYS
        if unknown:
            raise ConfigError(f"{config_file}: unknown settings {', '.join(sorted(unknown))}")
        file_values = loaded

    def pick(key: str) -> Any:
        if flags.get(key) not in (None, (), []):
            return flags[key]
        if key in ENV and env.get(ENV[key]):
            return env[ENV[key]]
        return file_values.get(key)

    url = pick("manager_url")
    if not url:
        raise ConfigError("no manager URL: pass --manager-url or set TETHER_MANAGER_URL")
    url = str(url).rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(f"the manager URL must start with https:// (got {url!r})")

    token = pick("token")
    token_file = pick("token_file")
    read_from: Path | None = None
    if not token and token_file:
        read_from = Path(token_file).absolute()
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file {token_file}: {exc.strerror};"
                " check --token-file ($TETHER_TOKEN_FILE)"
            ) from None
    if not token:
        raise ConfigError("no delegate token: pass --token or set TETHER_TOKEN")

    name = str(pick("name") or socket.gethostname())
    raw_max = pick("max_tasks")
    try:
        max_tasks = int(raw_max) if raw_max is not None else 4
    except ValueError:
        raise ConfigError(
            f"max tasks must be a whole number (got {raw_max!r}); check --max-tasks"
        ) from None
    if not 1 <= max_tasks <= 1000:
        raise ConfigError(
            f"max tasks must be between 1 and 1000 (got {max_tasks}); check --max-tasks"
        )

    types_raw = pick("task_types")
    try:
        types = tuple(TaskType(t) for t in _split(types_raw)) if types_raw else tuple(TaskType)
    except ValueError:
        raise ConfigError(
            f"task types: choose from {', '.join(t.value for t in TaskType)}"
        ) from None

    ca = pick("ca_file")
    if ca and not Path(ca).is_file():
        raise ConfigError(f"the CA file {ca} does not exist; check --ca-file ($TETHER_CA_FILE)")
    data_dir = pick("data_dir")
    client_cert, client_key = pick("client_cert"), pick("client_key")
    if bool(client_cert) != bool(client_key):
        raise ConfigError(
            "a client certificate and its key go together: --client-cert and --client-key"
        )
    for path, flag in ((client_cert, "--client-cert"), (client_key, "--client-key")):
        if path and not Path(path).is_file():
            raise ConfigError(f"{path} does not exist; check {flag}")
    raw_ttl = pick("secret_cache_ttl")
    try:
        secret_cache_ttl = DEFAULT_TTL if raw_ttl is None else float(raw_ttl)
    except (TypeError, ValueError):
        raise ConfigError(
            f"secret cache TTL must be a number of seconds (got {raw_ttl!r});"
            " check --secret-cache-ttl"
        ) from None
    if not 0 <= secret_cache_ttl < float("inf"):
        raise ConfigError(
            "secret cache TTL must be 0 (no cache) or a positive number of seconds;"
            " check --secret-cache-ttl"
        )
    shared_user = _flag(pick("shared_user"), "shared user")
    task_users = _split(pick("task_users") or ())
    if not task_users:
        prefix = str(pick("task_user_prefix") or DEFAULT_TASK_USER_PREFIX)
        task_users = pool_names(prefix, max_tasks)
    elif len(task_users) < max_tasks:
        raise ConfigError(
            f"{max_tasks} tasks at once need {max_tasks} task users; {len(task_users)} given:"
            " check --task-users and --max-tasks"
        )
    data_path = (
        Path(data_dir) if data_dir else Path.home() / ".local/state/tether-delegate" / name
    ).absolute()
    work_dir = pick("work_dir")
    work_path = Path(work_dir).absolute() if work_dir else None
    if not shared_user:
        # Task users must reach their directories, and the data dir stays 0700.
        work_path = work_path or data_path.with_name(f"{data_path.name}-tasks")
        if work_path.is_relative_to(data_path):
            raise ConfigError(
                "the work directory must be outside the data directory when tasks run as"
                " task users: check --work-dir and --data-dir"
            )
    return DelegateConfig(
        manager_url=url,
        token=str(token),
        name=name,
        # Absolute, because each task runs in a working directory of its own.
        data_dir=data_path,
        ca_file=Path(ca) if ca else None,
        selectors=_split(pick("selectors") or ()),
        max_tasks=max_tasks,
        task_types=types,
        log_level=str(pick("log_level") or "info"),
        time_scale=float(pick("time_scale") or 1.0),
        client_cert=Path(client_cert) if client_cert else None,
        client_key=Path(client_key) if client_key else None,
        secret_cache_ttl=secret_cache_ttl,
        shared_user=shared_user,
        task_users=task_users[:max_tasks],
        work_dir=work_path,
        token_file=read_from,
        launcher_socket=Path(launcher).absolute()
        if (launcher := pick("launcher_socket"))
        else None,
    )


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{what}: expected true or false (got {value!r})")
