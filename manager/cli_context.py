"""What every ``tether`` command handler shares: its context, its usage error, the exit codes.

Its own module so the entry (:mod:`manager.tether_cli`) and the handlers
(:mod:`manager.cli_tasks`, :mod:`manager.cli_admin`) can all import it without importing
each other.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from manager.cli_format import Console
from manager.client import TetherClient

__all__ = [
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_TIMED_OUT",
    "EXIT_USAGE",
    "Context",
    "Handler",
    "UsageError",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_EXPIRED = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class UsageError(Exception):
    """Bad arguments or configuration: exit status 2."""


@dataclass
class Context:
    client: TetherClient
    console: Console
    output: str
    interrupted: asyncio.Event
    handle_signals: bool = False

    @property
    def json(self) -> bool:
        return self.output == "json"


Handler = Callable[[Context, argparse.Namespace], Awaitable[int]]
