"""``tether-delegate run``: the daemon customers install on hosts in their network.

Exit statuses: 0 stopped cleanly, 1 failed, 2 bad configuration, 3 the manager refused the
token (revoked, unknown) or another process took over this delegate, 4 the manager no
longer speaks this delegate's protocol. A service manager should not restart on 2, 3 or 4.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from delegate.agent import Agent
from delegate.api import ManagerApi
from delegate.config import ConfigError, DelegateConfig, resolve
from shared import __version__
from shared.limits import Timings
from shared.logging import LEVELS, configure_logging
from shared.masking import Masker
from shared.protocol import PROTOCOL_VERSION, RegisterRequest
from shared.runtime import run
from shared.sealing import (
    SealError,
    load_or_create_private_key,
    public_from_private,
    public_key_b64,
)
from shared.tls import client_context

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_CONFIG = 2

log = structlog.get_logger("tether.delegate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-delegate", description="The Tether delegate.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="connect to the manager and run tasks")
    r.add_argument("--config", type=Path, help="YAML file of settings (lowest precedence)")
    r.add_argument("--manager-url", help="https://HOST:PORT ($TETHER_MANAGER_URL)")
    r.add_argument("--token", help="delegate token ($TETHER_TOKEN); prefer --token-file")
    r.add_argument("--token-file", help="file holding the token ($TETHER_TOKEN_FILE)")
    r.add_argument(
        "--ca-file", help="CA bundle the manager's certificate chains to ($TETHER_CA_FILE)"
    )
    r.add_argument("--name", help="delegate name ($TETHER_DELEGATE_NAME; default: hostname)")
    r.add_argument(
        "--selector",
        action="append",
        dest="selectors",
        help="a selector tasks can ask for; repeat, or comma-separate ($TETHER_SELECTORS)",
    )
    r.add_argument("--max-tasks", type=int, help="tasks run at once ($TETHER_MAX_TASKS; default 4)")
    r.add_argument("--data-dir", help="keys and work files ($TETHER_DELEGATE_DATA_DIR)")
    r.add_argument("--log-level", choices=LEVELS)
    r.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    r.add_argument(
        "--time-scale", type=float, help="multiply the delegate's own timings; for tests"
    )
    return p


async def _run(config: DelegateConfig, masker: Masker) -> int:
    try:
        private = load_or_create_private_key(config.data_dir / "delegate.key")
    except SealError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    timings = Timings().scaled(config.time_scale)
    registration = RegisterRequest(
        name=config.name,
        hostname=socket.gethostname(),
        version=__version__,
        protocol_version=PROTOCOL_VERSION,
        selectors=list(config.selectors),
        capacity=config.max_tasks,
        task_types=list(config.task_types),
        public_key=public_key_b64(public_from_private(private)),
    )
    ssl_ctx = client_context(config.ca_file)
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: cancelling running tasks now")
            force.set()
        else:
            log.info("stopping: finishing running tasks", grace_s=timings.shutdown_grace)
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with ManagerApi(
        config.manager_url, token=config.token, registration=registration, ssl_context=ssl_ctx
    ) as api:
        agent = Agent(config, api, private_key=private, timings=timings, process_masker=masker)
        log.info(
            "delegate starting",
            name=config.name,
            manager=config.manager_url,
            selectors=list(config.selectors),
            max_tasks=config.max_tasks,
        )
        status = await agent.run(stop, force)
    log.info("delegate stopped", status=status)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = {
        "manager_url": args.manager_url,
        "token": args.token,
        "token_file": args.token_file,
        "ca_file": args.ca_file,
        "name": args.name,
        "selectors": [s for item in args.selectors or () for s in item.split(",") if s.strip()],
        "max_tasks": args.max_tasks,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "time_scale": args.time_scale,
    }
    try:
        config = resolve(flags, os.environ, args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # The token is a secret of this process: it never shows in its own log output.
    masker = Masker([config.token])
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(level=config.log_level, json_output=fmt, masker=masker)
    if config.time_scale <= 0:
        print("error: --time-scale must be positive", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return run(_run(config, masker))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
