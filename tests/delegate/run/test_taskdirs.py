"""Task directories kept between tasks run as the delegate's own user, and the checks that
send one away instead (delegate.run.taskdirs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from delegate.run.taskdirs import TaskDir, TaskDirs
from shared.protocol import ShellPayload
from tests.delegate.run.test_executor import run


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def released(dirs: TaskDirs, made: TaskDir) -> None:
    if not dirs.release(made):
        dirs.remove(made)


def test_a_directory_left_as_made_is_kept_and_given_the_next_script_in_place(
    tmp_path: Path,
) -> None:
    dirs = TaskDirs(tmp_path, keep=2)
    first = dirs.make(b"echo a long first script", {}, None, reuse=True)
    os.write(os.open(first.output_file, os.O_WRONLY | os.O_APPEND), b"X=1\n")
    released(dirs, first)
    assert dirs.has_kept()
    # Nothing of the task stays at rest in a kept directory.
    assert first.script.read_bytes() == b""
    assert first.output_file.read_bytes() == b""

    second = dirs.make(b"true", {}, None, reuse=True)

    assert second.task_dir == first.task_dir
    assert second.script.read_bytes() == b"true"
    assert os.fstat(second.output_fd).st_size == 0
    assert second.output_file.read_bytes() == b""
    assert not dirs.has_kept()
    released(dirs, second)
    dirs.close()
    assert entries(tmp_path) == []


def grow_a_file(made: TaskDir) -> None:
    (made.task_dir / "left-behind").write_text("x")


def replace_the_script(made: TaskDir) -> None:
    other = made.task_dir / "other"
    other.write_text("x")
    other.chmod(0o600)
    os.replace(other, made.script)


def link_the_output_elsewhere(made: TaskDir) -> None:
    os.link(made.output_file, made.task_dir.parent / "watcher")


def open_the_directory(made: TaskDir) -> None:
    made.task_dir.chmod(0o755)


def open_the_script(made: TaskDir) -> None:
    made.script.chmod(0o644)


def swap_the_output_for_a_symlink(made: TaskDir) -> None:
    made.output_file.unlink()
    made.output_file.symlink_to("/etc/hostname")


def swap_the_output_for_a_directory(made: TaskDir) -> None:
    made.output_file.unlink()
    made.output_file.mkdir()
    (made.output_file / "inside").write_text("x")


def write_into_the_output(made: TaskDir) -> None:
    with made.output_file.open("a") as f:
        f.write("DEPLOYED_VERSION=forged-by-another-task\n")


def write_into_the_script(made: TaskDir) -> None:
    made.script.write_text("echo not the task's own script")


def give_the_output_an_attribute(made: TaskDir) -> None:
    os.setxattr(made.output_file, "user.left", b"data of an earlier task")


# What a task can do to a directory: each sends it away, whether done by the task that
# ran in it (found when it is kept) or by another while it was kept (found when taken).
CHANGES = [
    grow_a_file,
    replace_the_script,
    write_into_the_script,
    write_into_the_output,
    link_the_output_elsewhere,
    open_the_directory,
    open_the_script,
    swap_the_output_for_a_symlink,
    swap_the_output_for_a_directory,
    give_the_output_an_attribute,
]


# Its own task may write its two files: they are emptied, and the directory kept.
WRITES = (write_into_the_script, write_into_the_output)


@pytest.mark.parametrize("change", [c for c in CHANGES if c not in WRITES])
def test_a_directory_the_task_changed_is_removed_not_kept(
    tmp_path: Path, change: Callable[[TaskDir], None]
) -> None:
    root = tmp_path / "work"
    dirs = TaskDirs(root, keep=2)
    made = dirs.make(b"true", {}, None, reuse=True)
    change(made)

    released(dirs, made)

    assert not dirs.has_kept()
    assert not made.task_dir.exists()


@pytest.mark.parametrize("change", CHANGES)
def test_a_kept_directory_another_task_changed_is_not_taken(
    tmp_path: Path, change: Callable[[TaskDir], None]
) -> None:
    # Another task of the delegate's own user can reach a kept directory while it waits:
    # the next task must not run a script it did not send, nor report outputs it did not
    # write (review finding: the checks ran only when a directory was kept).
    root = tmp_path / "work"
    dirs = TaskDirs(root, keep=1)
    kept = dirs.make(b"true", {}, None, reuse=True)
    released(dirs, kept)
    assert dirs.has_kept()
    change(kept)

    made = dirs.make(b"echo the later task", {}, None, reuse=True)

    assert made.task_dir != kept.task_dir
    assert not kept.task_dir.exists()
    assert made.script.read_bytes() == b"echo the later task"
    assert os.fstat(made.output_fd).st_size == 0
    released(dirs, made)
    dirs.close()


def test_an_attribute_a_task_set_sends_its_directory_away(tmp_path: Path) -> None:
    dirs = TaskDirs(tmp_path, keep=1)
    made = dirs.make(b"true", {}, None, reuse=True)
    give_the_output_an_attribute(made)

    released(dirs, made)

    assert not dirs.has_kept()
    assert entries(tmp_path) == []


def test_a_script_is_written_whole_however_short_each_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk makes write() store part of what it is given and say so: the rest must
    # follow, or an error, never a task running the first part of its script.
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", short_write)
    dirs = TaskDirs(tmp_path, keep=1)
    fresh = dirs.make(b"echo keep; rm -rf ./scratch", {}, None, reuse=True)
    assert fresh.script.read_bytes() == b"echo keep; rm -rf ./scratch"
    released(dirs, fresh)
    kept = dirs.make(b"echo the second script", {}, None, reuse=True)
    assert kept.task_dir == fresh.task_dir
    assert kept.script.read_bytes() == b"echo the second script"


def test_secret_files_send_their_directory_away(tmp_path: Path) -> None:
    dirs = TaskDirs(tmp_path, keep=2)
    made = dirs.make(b"true", {"KEY_FILE": b"secret"}, None, reuse=True)
    assert Path(made.file_env["KEY_FILE"]).read_bytes() == b"secret"

    released(dirs, made)

    assert not dirs.has_kept()
    assert entries(tmp_path) == []


def test_no_more_than_keep_are_kept_and_none_without_reuse(tmp_path: Path) -> None:
    dirs = TaskDirs(tmp_path, keep=1)
    a = dirs.make(b"true", {}, None, reuse=True)
    b = dirs.make(b"true", {}, None, reuse=True)
    as_user = dirs.make(b"true", {}, None, reuse=False)
    for made in (a, b, as_user):
        released(dirs, made)

    assert entries(tmp_path) == [a.task_dir.name]
    dirs.close()
    assert entries(tmp_path) == []


def test_a_working_dir_error_still_gives_a_directory_to_release(tmp_path: Path) -> None:
    dirs = TaskDirs(tmp_path, keep=1)
    made = dirs.make(b"true", {}, "../out", reuse=True)
    assert made.error == "working_dir ../out leads out of the task's directory"
    released(dirs, made)
    again = dirs.make(b"true", {}, None, reuse=True)
    assert again.error is None
    assert again.cwd == again.task_dir


async def run_in(dirs: TaskDirs, script: str) -> tuple[dict[str, str], list[str]]:
    done = await run(
        ShellPayload(script=script), dirs.work_root, secret_env={}, flush_after=3600, task_dirs=dirs
    )
    assert done.result.status == "succeeded", done.result.error
    return done.result.outputs, done.texts()


async def test_a_task_in_a_kept_directory_sees_nothing_of_the_one_before(tmp_path: Path) -> None:
    dirs = TaskDirs(tmp_path, keep=1)
    first, _ = await run_in(
        dirs, 'echo "A=from the first task, whose script is the longer" >> "$TETHER_OUTPUT"'
    )
    assert first == {"A": "from the first task, whose script is the longer"}
    assert dirs.has_kept()

    outputs, printed = await run_in(dirs, 'cat "$0"; cat "$TETHER_OUTPUT"; ls -A\n')

    assert outputs == {}
    # Its own script whole and nothing after it, an empty output file, its own two files.
    assert printed == ['cat "$0"; cat "$TETHER_OUTPUT"; ls -A', "output", "script"]
    dirs.close()
    assert entries(tmp_path) == []
