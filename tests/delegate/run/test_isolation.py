"""Task users: the pool's slots, the capability check, the account checks, and the refusal
of a delegate that cannot switch users."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from delegate import cli
from delegate.config import DelegateConfig, resolve
from delegate.run.isolation import (
    IsolationError,
    TaskUser,
    UserPool,
    lookup_users,
    missing_capabilities,
    pool_names,
)

BIN = Path(sys.executable).parent
USERS = [TaskUser(f"tether-task-{i}", 2000 + i, 2000 + i) for i in range(3)]


def test_pool_hands_out_the_lowest_free_slot_and_each_once() -> None:
    pool = UserPool(USERS)
    first, second = pool.take(), pool.take()
    assert (first, second) == (USERS[0], USERS[1])
    pool.give_back(first)
    # A delegate running one task at a time keeps using the same account.
    assert pool.take() == USERS[0]
    assert pool.take() == USERS[2]
    assert pool.free == 0
    with pytest.raises(IsolationError, match="all 3 task users are busy"):
        pool.take()


def test_pool_never_hands_a_busy_user_to_a_second_task() -> None:
    pool = UserPool(USERS)
    taken = [pool.take() for _ in USERS]
    assert len(set(taken)) == len(USERS)
    pool.give_back(taken[1])
    assert pool.take() == taken[1]
    with pytest.raises(KeyError):
        pool.give_back(TaskUser("stranger", 1, 1))


def test_pool_names_are_the_prefix_and_the_slot() -> None:
    assert pool_names("tether-task-", 2) == ("tether-task-0", "tether-task-1")


@pytest.mark.parametrize(
    ("capeff", "missing"),
    [
        ("000001ffffffffff", []),  # root's full set
        ("00000000000000e1", []),  # CHOWN, KILL, SETGID, SETUID: what the unit grants
        ("0000000000000000", ["CAP_CHOWN", "CAP_KILL", "CAP_SETGID", "CAP_SETUID"]),
        ("00000000000000c0", ["CAP_CHOWN", "CAP_KILL"]),  # can switch, cannot hand over
    ],
)
def test_missing_capabilities_reads_the_effective_set(capeff: str, missing: list[str]) -> None:
    status = f"Name:\ttether-delegate\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert missing_capabilities(status) == missing


def test_lookup_refuses_an_account_that_does_not_exist() -> None:
    with pytest.raises(IsolationError, match="task user no-such-user-x1 does not exist"):
        lookup_users(["no-such-user-x1"], own_uid=os.geteuid())


def test_lookup_refuses_root_and_the_delegates_own_user() -> None:
    with pytest.raises(IsolationError, match="is root"):
        lookup_users(["root"], own_uid=12345)
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(IsolationError, match="this delegate's own user"):
        lookup_users(["nobody"], own_uid=nobody.pw_uid)
    assert lookup_users(["nobody"], own_uid=0) == (
        TaskUser("nobody", nobody.pw_uid, nobody.pw_gid),
    )


def test_lookup_refuses_one_account_for_two_slots() -> None:
    with pytest.raises(IsolationError, match="the same account"):
        lookup_users(["nobody", "nobody"], own_uid=0)


def _unprivileged(argv: list[str]) -> list[str]:
    """``argv`` as a user without capabilities: as is when this test is not root, else
    through setpriv as nobody with every capability dropped."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root, needs setpriv (util-linux) to run the delegate unprivileged")
    return [
        setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--", *argv,
    ]  # fmt: skip


def test_a_delegate_that_cannot_switch_users_refuses_to_start_without_shared_user(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o777)  # nobody makes its data dir here
    argv = [
        str(BIN / "tether-delegate"), "run", "--manager-url", "https://127.0.0.1:9",
        "--token", "tdt_x", "--data-dir", str(tmp_path / "d"),
    ]  # fmt: skip
    proc = subprocess.run(
        _unprivileged(argv), capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: this delegate cannot run tasks as other users")
    assert "--shared-user" in lines[0]
    assert "CAP_SETUID" in lines[0]
    assert not (tmp_path / "d").exists(), "it refused before making anything"


# A child of the process under test reads its parent's environment, as a task reads
# /proc/$PPID/environ; both run as the same (unprivileged) user.
_ENVIRON_CHECK = """
import subprocess, sys
sys.path[:0] = [sys.argv[2]]
from delegate.run.isolation import harden_process
if sys.argv[1] == "harden":
    harden_process(task_users=False)
child = (
    "import os\\n"
    "try:\\n"
    "    open(f'/proc/{os.getppid()}/environ', 'rb').read(1)\\n"
    "    print('READ')\\n"
    "except OSError:\\n"
    "    print('denied')\\n"
)
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
"""


@pytest.mark.parametrize(("mode", "expected"), [("harden", "denied"), ("plain", "READ")])
def test_a_hardened_process_hides_its_environment_from_its_own_user(
    mode: str, expected: str
) -> None:
    """Even with --shared-user, a task cannot read the delegate's /proc/PID/environ; the
    "plain" case shows the same read succeeds without harden_process."""
    python = sys.executable
    if os.geteuid() == 0:
        # The system's interpreter: the virtualenv's may be where nobody cannot reach.
        python = "/usr/bin/python3"
        if not Path(python).is_file():
            pytest.skip("as root, needs /usr/bin/python3 to run as nobody")
    repo = str(Path(__file__).resolve().parents[3])
    argv = _unprivileged([python, "-I", "-c", _ENVIRON_CHECK, mode, repo])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert proc.stdout.strip() == expected, proc.stderr


def test_a_token_file_a_task_user_could_read_is_refused(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the check comes after the one for switching users")
    token = tmp_path / "token"
    token.write_text("tdt_x\n")
    token.chmod(0o644)
    config = resolve(
        {
            "manager_url": "https://m:1",
            "token_file": str(token),
            "task_users": "nobody",
            "max_tasks": 1,
        },
        {},
        None,
    )
    with pytest.raises(IsolationError, match=r"can be read by the task users \(mode 0644"):
        cli._switcher(config)
    nobody = pwd.getpwnam("nobody")
    token.chmod(0o640)
    os.chown(token, 0, nobody.pw_gid)
    with pytest.raises(IsolationError, match="can be read by the task users"):
        cli._switcher(config)
    os.chown(token, nobody.pw_uid, 0)
    with pytest.raises(IsolationError, match="can be read by the task users"):
        cli._switcher(config)
    # A group the task users are not in (as a systemd credential's ACL shows) is no way in.
    os.chown(token, 0, 0)
    assert [u.name for u in _users(config)] == ["nobody"]
    token.chmod(0o600)
    assert [u.name for u in _users(config)] == ["nobody"]


def _users(config: DelegateConfig) -> tuple[TaskUser, ...]:
    switcher = cli._switcher(config)
    assert switcher is not None
    return switcher.users
