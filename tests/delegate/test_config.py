"""Delegate settings: flags win over the environment, the environment over the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from delegate.config import ConfigError, resolve
from shared.protocol import TaskType

URL = "https://manager.example:8443"


def flags(**over: Any) -> dict[str, Any]:
    return {"manager_url": None, "token": None, "selectors": [], **over}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "delegate.yaml"
    path.write_text(text)
    return path


def test_flag_wins_over_environment_and_file(tmp_path: Path) -> None:
    cfg = resolve(
        flags(manager_url=URL, token="t", name="from-flag"),
        {"TETHER_DELEGATE_NAME": "from-env"},
        write(tmp_path, "name: from-file\n"),
    )
    assert cfg.name == "from-flag"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    cfg = resolve(
        flags(),
        {"TETHER_MANAGER_URL": URL, "TETHER_TOKEN": "t", "TETHER_MAX_TASKS": "7"},
        write(tmp_path, "max_tasks: 2\nname: filed\n"),
    )
    assert cfg.max_tasks == 7
    assert cfg.name == "filed"


def test_file_alone_configures_everything(tmp_path: Path) -> None:
    cfg = resolve(
        flags(),
        {},
        write(tmp_path, f"manager_url: {URL}\ntoken: t\nselectors: [a, b]\nmax_tasks: 3\n"),
    )
    assert (cfg.manager_url, cfg.selectors, cfg.max_tasks) == (URL, ("a", "b"), 3)


def test_selectors_from_the_environment_are_comma_separated() -> None:
    cfg = resolve(
        flags(manager_url=URL, token="t"), {"TETHER_SELECTORS": "linux, eu-west,,gpu"}, None
    )
    assert cfg.selectors == ("linux", "eu-west", "gpu")


def test_token_can_come_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tdt_secret\n")
    cfg = resolve(flags(manager_url=URL, token_file=str(token_file)), {}, None)
    assert cfg.token == "tdt_secret"


def test_token_is_not_in_the_repr() -> None:
    cfg = resolve(flags(manager_url=URL, token="tdt_hidden"), {}, None)
    assert "tdt_hidden" not in repr(cfg)


def test_relative_data_dir_becomes_absolute() -> None:
    cfg = resolve(flags(manager_url=URL, token="t", data_dir="rel/dir"), {}, None)
    assert cfg.data_dir.is_absolute()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (flags(token="t"), "no manager URL"),
        (flags(manager_url=URL), "no delegate token"),
        (flags(manager_url="http://plain:80", token="t"), "https://"),
        (flags(manager_url=URL, token="t", max_tasks="lots"), "whole number"),
        (flags(manager_url=URL, token="t", max_tasks=0), "between 1 and 1000"),
        (flags(manager_url=URL, token="t", ca_file="/nope/ca.pem"), "does not exist"),
    ],
)
def test_bad_settings_get_a_clear_error(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(given, {}, None)


def test_unknown_file_setting_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        resolve(flags(manager_url=URL, token="t"), {}, write(tmp_path, "colour: red\n"))


def test_malformed_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(flags(manager_url=URL, token="t"), {}, write(tmp_path, "a: [unclosed\n"))


def test_client_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        resolve(flags(manager_url=URL, token="t", client_cert=str(cert)), {}, None)


def test_client_certificate_from_the_environment(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    env = {"TETHER_CLIENT_CERT": str(cert), "TETHER_CLIENT_KEY": str(key)}
    cfg = resolve(flags(manager_url=URL, token="t"), env, None)
    assert (cfg.client_cert, cfg.client_key) == (cert, key)


def test_no_selectors_means_none() -> None:
    assert resolve(flags(manager_url=URL, token="t"), {}, None).selectors == ()


def test_secret_op_is_advertised_by_default() -> None:
    cfg = resolve(flags(manager_url=URL, token="t"), {}, None)
    assert TaskType.SECRET_OP in cfg.task_types


def test_secret_cache_ttl_defaults_to_thirty_minutes() -> None:
    cfg = resolve(flags(manager_url=URL, token="t"), {}, None)
    assert cfg.secret_cache_ttl == 1800.0


def test_secret_cache_ttl_from_flag_environment_and_file(tmp_path: Path) -> None:
    base = flags(manager_url=URL, token="t")
    env = {"TETHER_SECRET_CACHE_TTL": "60"}
    assert resolve({**base, "secret_cache_ttl": 5.0}, env, None).secret_cache_ttl == 5.0
    assert resolve(base, env, write(tmp_path, "secret_cache_ttl: 90\n")).secret_cache_ttl == 60
    assert resolve(base, {}, write(tmp_path, "secret_cache_ttl: 90\n")).secret_cache_ttl == 90


def test_secret_cache_ttl_zero_turns_the_cache_off(tmp_path: Path) -> None:
    base = flags(manager_url=URL, token="t")
    assert resolve({**base, "secret_cache_ttl": 0.0}, {}, None).secret_cache_ttl == 0
    assert resolve(base, {}, write(tmp_path, "secret_cache_ttl: 0\n")).secret_cache_ttl == 0


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_bad_secret_cache_ttl_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="secret cache TTL"):
        resolve(flags(manager_url=URL, token="t"), {"TETHER_SECRET_CACHE_TTL": value}, None)


# -- task isolation ---------------------------------------------------------------------


def test_tasks_get_a_task_user_per_slot_unless_shared_user_is_asked(tmp_path: Path) -> None:
    cfg = resolve(
        flags(manager_url=URL, token="t", max_tasks=3, data_dir=str(tmp_path / "d")), {}, None
    )
    assert not cfg.shared_user
    assert cfg.task_users == ("tether-task-0", "tether-task-1", "tether-task-2")
    # Outside the data dir, which stays 0700: task users must reach their directories.
    assert cfg.work_root == tmp_path / "d-tasks"


@pytest.mark.parametrize(
    ("given", "env", "text"),
    [
        (True, {}, ""),
        (None, {"TETHER_SHARED_USER": "yes"}, ""),
        (None, {}, "shared_user: true\n"),
    ],
)
def test_shared_user_from_flag_environment_or_file(
    tmp_path: Path, given: bool | None, env: dict[str, str], text: str
) -> None:
    cfg = resolve(
        flags(manager_url=URL, token="t", shared_user=given, data_dir=str(tmp_path / "d")),
        env,
        write(tmp_path, text),
    )
    assert cfg.shared_user
    assert cfg.work_root == tmp_path / "d" / "work"


def test_shared_user_that_is_not_a_yes_or_no_is_refused() -> None:
    with pytest.raises(ConfigError, match="shared user: expected true or false"):
        resolve(flags(manager_url=URL, token="t"), {"TETHER_SHARED_USER": "maybe"}, None)


def test_task_user_prefix_and_explicit_list(tmp_path: Path) -> None:
    by_prefix = resolve(
        flags(manager_url=URL, token="t", max_tasks=2), {"TETHER_TASK_USER_PREFIX": "ci-"}, None
    )
    assert by_prefix.task_users == ("ci-0", "ci-1")
    listed = resolve(
        flags(manager_url=URL, token="t", max_tasks=2),
        {},
        write(tmp_path, "task_users: [runner-a, runner-b, runner-c]\n"),
    )
    assert listed.task_users == ("runner-a", "runner-b")


def test_fewer_task_users_than_slots_is_refused() -> None:
    with pytest.raises(ConfigError, match="3 tasks at once need 3 task users; 2 given"):
        resolve(flags(manager_url=URL, token="t", max_tasks=3, task_users="a,b"), {}, None)


def test_work_dir_inside_the_data_dir_is_refused_for_task_users(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with pytest.raises(ConfigError, match="outside the data directory"):
        resolve(
            flags(manager_url=URL, token="t", data_dir=str(data), work_dir=str(data / "w")),
            {},
            None,
        )
