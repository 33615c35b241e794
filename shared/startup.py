"""Start-up errors of the long-running commands (manager, delegate): one line each.

A process that cannot start as configured says, on one line, what failed, naming the file,
address or setting, and which flag changes it, then exits with status 2. systemd's units
list 2 in ``RestartPreventExitStatus=``: restarting cannot fix a configuration, so a bad one
stops instead of crash-looping. Anything unexpected is one line too, with status 1; the
traceback is for ``--debug`` (or ``TETHER_DEBUG=1``).
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
import traceback
from pathlib import Path

from shared.tls import server_context

__all__ = [
    "ConfigProblem",
    "debug_wanted",
    "listen_problem",
    "load_server_tls",
    "report_unexpected",
]


class ConfigProblem(Exception):
    """This process cannot start as configured; the message is one line for the operator."""


def debug_wanted(flag: bool | None) -> bool:
    return bool(flag) or os.environ.get("TETHER_DEBUG", "") not in ("", "0")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _readable(path: Path, what: str, flag: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigProblem(
            f"cannot read the {what} {path}: {_reason(exc)}; check {flag}"
        ) from None


def load_server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """The server context for an operator's certificate and key, or a ConfigProblem naming
    the file at fault."""
    _readable(cert, "TLS certificate", "--tls-cert")
    _readable(key, "TLS key", "--tls-key")
    try:
        return server_context(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigProblem(
            f"cannot use the TLS certificate {cert} with the key {key}: {_reason(exc)};"
            " check --tls-cert and --tls-key (PEM, the key must match the certificate)"
        ) from None


def listen_problem(host: str, port: int, exc: OSError, flag: str = "--listen") -> ConfigProblem:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        hint = f"another process listens there (ss -ltnp 'sport = :{port}'): stop it, or"
    elif exc.errno == errno.EACCES:
        hint = "ports below 1024 need a privilege this process lacks: use another, or"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = "no interface of this host has that address:"
    else:
        hint = "check the address, or"
    return ConfigProblem(
        f"cannot listen on {address}: {_reason(exc)}; {hint} pass {flag} HOST:PORT"
    )


def report_unexpected(exc: BaseException, prog: str, *, debug: bool) -> None:
    """One line on stderr for an error nobody foresaw; the traceback only when asked."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    hint = "" if debug else f" (run {prog} with --debug for the traceback)"
    print(f"error: {detail}{hint}", file=sys.stderr)
