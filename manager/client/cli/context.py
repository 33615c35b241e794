"""What every ``tether`` command handler shares: its context, its usage error, the exit codes.

Its own module so the entry (:mod:`manager.client.cli.main`) and the handlers
(:mod:`manager.client.cli.tasks`, :mod:`manager.client.cli.fleet`) can all import it
without importing each other.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from manager.client import TetherClient
from manager.client.cli.output import Console

__all__ = [
    "EXIT_BAD_ANSWER",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_TIMED_OUT",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Context",
    "Handler",
    "LocalHandler",
    "Prompt",
    "UsageError",
    "parse_when",
    "terminal_prompt",
]

# Exit statuses of `tether` (the README's table; `task run` and `task logs --follow` exit
# like the task instead, once it ran).
EXIT_ERROR = 1  # the manager refused (an API error: 4xx, 5xx)
EXIT_USAGE = 2  # usage or configuration: a bad flag, no login, an untrusted CA, http vs https
EXIT_UNREACHABLE = 3  # no answer: connection refused, timed out, the log stream lost
EXIT_BAD_ANSWER = 4  # an answer that is not the API's (a proxy page, another server)
EXIT_INTERNAL = 70  # a bug in tether (EX_SOFTWARE); --debug shows the traceback
EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_EXPIRED = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UsageError(Exception):
    """Bad arguments or configuration: exit status 2."""


# (question, secret) -> answer; tests answer from a script.
Prompt = Callable[[str, bool], str]


def terminal_prompt(question: str, secret: bool) -> str:
    """Ask on the terminal (stderr), without echo for a secret."""
    if secret:
        return getpass.getpass(question, stream=sys.stderr)
    sys.stderr.write(question)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise UsageError("no answer (standard input is closed)")
    return line.rstrip("\n")


@dataclass
class Context:
    client: TetherClient
    console: Console
    output: str
    interrupted: asyncio.Event
    handle_signals: bool = False
    # For `tether login` and `logout` (manager.client.cli.login): how to ask, where the session is
    # kept and for which manager, and whether a stored session is in use.
    prompt: Prompt = terminal_prompt
    stdin: TextIO | None = None
    config_dir: Path = field(default_factory=lambda: Path.home() / ".config" / "tether")
    manager_url: str = ""
    session: bool = False
    sso_poll_s: float = 1.0
    # The context a login is stored in, and the CA file in use (stored with it).
    context_name: str = "default"
    ca_file: Path | None = None
    # `task logs --timestamps`: each log line starts with its RFC 3339 time.
    timestamps: bool = False

    @property
    def json(self) -> bool:
        """Machine output: JSON, or YAML (the same document)."""
        return self.output in ("json", "yaml")


Handler = Callable[[Context, argparse.Namespace], Awaitable[int]]
# A command that needs no manager (contexts, completion): it gets the console, its arguments
# and the environment, and returns the exit status.
LocalHandler = Callable[[Console, argparse.Namespace, Mapping[str, str]], int]


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(value: str) -> float:
    """A point in time: an ISO 8601 timestamp, or a duration ago such as 30m, 2h or 7d."""
    match = _DURATION.match(value.strip())
    if match:
        return time.time() - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO time (2026-11-22T10:00) or a duration ago (30m, 2h), got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()
