"""Delegate configuration: flags win over the environment, the environment over the file."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
}
KEYS = set(ENV) | {"task_types", "log_level", "time_scale"}


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
            raise ConfigError(f"cannot read {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file} is not valid YAML: {exc}") from None
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
    if not token and token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from None
    if not token:
        raise ConfigError("no delegate token: pass --token or set TETHER_TOKEN")

    name = str(pick("name") or socket.gethostname())
    raw_max = pick("max_tasks")
    try:
        max_tasks = int(raw_max) if raw_max is not None else 4
    except ValueError:
        raise ConfigError(f"max tasks must be a whole number (got {raw_max!r})") from None
    if not 1 <= max_tasks <= 1000:
        raise ConfigError("max tasks must be between 1 and 1000")

    types_raw = pick("task_types")
    try:
        types = tuple(TaskType(t) for t in _split(types_raw)) if types_raw else tuple(TaskType)
    except ValueError:
        raise ConfigError(
            f"task types: choose from {', '.join(t.value for t in TaskType)}"
        ) from None

    ca = pick("ca_file")
    if ca and not Path(ca).is_file():
        raise ConfigError(f"CA file {ca} does not exist")
    data_dir = pick("data_dir")
    client_cert, client_key = pick("client_cert"), pick("client_key")
    if bool(client_cert) != bool(client_key):
        raise ConfigError("a client certificate and its key go together")
    for path in (client_cert, client_key):
        if path and not Path(path).is_file():
            raise ConfigError(f"{path} does not exist")
    raw_ttl = pick("secret_cache_ttl")
    try:
        secret_cache_ttl = DEFAULT_TTL if raw_ttl is None else float(raw_ttl)
    except (TypeError, ValueError):
        raise ConfigError(
            f"secret cache TTL must be a number of seconds (got {raw_ttl!r})"
        ) from None
    if not 0 <= secret_cache_ttl < float("inf"):
        raise ConfigError("secret cache TTL must be 0 (no cache) or a positive number of seconds")
    return DelegateConfig(
        manager_url=url,
        token=str(token),
        name=name,
        # Absolute, because each task runs in a working directory of its own.
        data_dir=(
            Path(data_dir) if data_dir else Path.home() / ".local/state/tether-delegate" / name
        ).absolute(),
        ca_file=Path(ca) if ca else None,
        selectors=_split(pick("selectors") or ()),
        max_tasks=max_tasks,
        task_types=types,
        log_level=str(pick("log_level") or "info"),
        time_scale=float(pick("time_scale") or 1.0),
        client_cert=Path(client_cert) if client_cert else None,
        client_key=Path(client_key) if client_key else None,
        secret_cache_ttl=secret_cache_ttl,
    )
