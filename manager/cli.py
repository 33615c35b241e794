"""``tether-manager``: serve, and the host-side admin commands that work on the data dir.

Exit statuses: 0 done, 1 failed at run time, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from manager.app import ManagerConfig, open_store, serve
from manager.store.base import Store, StoreError
from manager.tokens import TokenInUse, create_token
from shared.limits import Timings
from shared.logging import LEVELS, configure_logging
from shared.runtime import run

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def _default_data_dir() -> Path:
    return Path(os.environ.get("TETHER_DATA_DIR") or ".tether-data")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tether-manager", description="The Tether manager server.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory (default: $TETHER_DATA_DIR, else ./.tether-data)",
    )
    common.add_argument("--log-level", choices=LEVELS, default="info")
    common.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="auto: readable on a terminal, JSON otherwise (under a service manager)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", parents=[common], help="run the manager")
    s.add_argument("--listen", type=_listen, default=("127.0.0.1", 8443), metavar="HOST:PORT")
    s.add_argument("--tls-cert", type=Path, help="server certificate (PEM); default: self-made")
    s.add_argument("--tls-key", type=Path, help="server key (PEM)")
    s.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every protocol timing (heartbeats, leases, polls); for tests and demos",
    )

    t = sub.add_parser("token", help="manage delegate tokens on the data dir")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", parents=[common], help="create a token; printed once")
    tc.add_argument("name")
    tl = tsub.add_parser("list", parents=[common], help="list tokens")
    tl.add_argument("--output", choices=("text", "json"), default="text")
    tr = tsub.add_parser("revoke", parents=[common], help="revoke a token")
    tr.add_argument("name")
    return p


async def _with_store(data_dir: Path, fn_name: str, args: argparse.Namespace) -> int:
    if not (data_dir / "tether.db").exists():
        print(f"error: no manager data in {data_dir} (pass --data-dir)", file=sys.stderr)
        return EXIT_USAGE
    store: Store = open_store(data_dir)
    await store.open()
    try:
        if fn_name == "create":
            try:
                record, token = await create_token(store, args.name)
            except TokenInUse as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"Created delegate token {record.name!r} ({record.id}). It is shown only once:")
            print(token)
        elif fn_name == "list":
            tokens = await store.list_tokens()
            if args.output == "json":
                print(
                    json.dumps(
                        [
                            {
                                "id": t.id,
                                "name": t.name,
                                "created_at": t.created_at,
                                "revoked_at": t.revoked_at,
                            }
                            for t in tokens
                        ],
                        indent=2,
                    )
                )
            else:
                print(f"{'NAME':24} {'ID':34} {'CREATED':20} STATUS")
                for t in tokens:
                    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created_at))
                    status = "revoked" if t.revoked_at else "active"
                    print(f"{t.name:24} {t.id:34} {created:20} {status}")
        elif fn_name == "revoke":
            revoked = await store.revoke_token(args.name, time.time())
            if revoked is None:
                print(f"error: no live token named {args.name!r}", file=sys.stderr)
                return EXIT_FAILED
            print(f"Revoked token {revoked.name!r}.")
            print("A running manager ends the sessions that use it within seconds.")
    finally:
        await store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path = (args.data_dir or _default_data_dir()).absolute()
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(level=args.log_level, json_output=fmt)
    try:
        if args.command == "serve":
            if bool(args.tls_cert) != bool(args.tls_key):
                print("error: --tls-cert and --tls-key go together", file=sys.stderr)
                return EXIT_USAGE
            if args.time_scale <= 0:
                print("error: --time-scale must be positive", file=sys.stderr)
                return EXIT_USAGE
            host, port = args.listen
            config = ManagerConfig(
                data_dir=data_dir,
                host=host,
                port=port,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                timings=Timings().scaled(args.time_scale),
            )

            def ready(url: str) -> None:
                # One plain line on stdout, for people and for scripts that wait for it.
                print(f"tether-manager listening on {url}", flush=True)

            return run(serve(config, ready=ready))
        return run(_with_store(data_dir, args.token_command, args))
    except KeyboardInterrupt:
        return 130
    except (OSError, StoreError) as exc:
        structlog.get_logger("tether.manager").error("manager failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
