"""structlog set-up for both services: JSON under a service manager, readable on a terminal.

Every line passes through a masking processor last-but-one, so a value registered with the
process's masker never reaches the output, whichever logger or key it came through.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from shared.masking import Masker, MaskingProcessor

__all__ = ["LEVELS", "configure_logging"]

LEVELS = ("debug", "info", "warning", "error")


def _current_stderr(*_args: Any) -> structlog.PrintLogger:
    # The stderr of the moment each logger is made (loggers are not cached), not the one at
    # configure time: a caller that swapped its stderr and closed the old one (an in-process
    # run under a test's capture, a daemon's redirect) must not leave logging writing there.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(
    *, level: str = "info", json_output: bool | None = None, masker: Masker | None = None
) -> Masker:
    """Configure structlog and return the masker its output passes through."""
    masker = masker if masker is not None else Masker()
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            MaskingProcessor(masker),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=_current_stderr,
        cache_logger_on_first_use=False,
    )
    # Libraries that use the standard logging module (aiohttp's access log is off; this
    # catches the rest) go to stderr at warning and above.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    return masker
