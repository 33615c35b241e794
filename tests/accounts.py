"""Throwaway OS accounts for the tests that run tasks as other users (they run as root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["system_accounts"]


@contextmanager
def system_accounts(prefix: str, count: int) -> Iterator[list[str]]:
    """``count`` system accounts, each with its own group and no home or shell, removed
    after. Named per process, since other test runs on the host may make theirs at once."""
    names = [f"{prefix}{os.getpid()}x{i}" for i in range(count)]
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                 "/usr/sbin/nologin", name],
                check=True,
            )  # fmt: skip
            made.append(name)
        yield names
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)
