"""``tether context``: named managers to switch between, as kubeconfig contexts or gh hosts.

    tether context add prod https://manager.example.com:8443 --ca-file ca.pem --use
    tether context list
    tether context use staging
    tether --context prod task list      # one command against another context
    tether context remove old

``tether login`` stores its session in the current context (or the one --context names),
with the URL and CA it used. A context's session token is never printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manager.client.cli import output as fmt
from manager.client.cli.config_file import ConfigFile, NamedContext, check_name, config_dir
from manager.client.cli.context import UsageError
from manager.client.cli.output import Console

__all__ = ["add_context_parsers"]


def _file(env: Mapping[str, str]) -> ConfigFile:
    return ConfigFile.load(config_dir(env))


def _session_text(ctx: NamedContext) -> str:
    s = ctx.session
    if s is None:
        return "-"
    return f"{s.email}, until {fmt.ago(s.expires_at)}" if s.live else f"{s.email}, expired"


def cmd_context_list(console: Console, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    file = _file(env)
    contexts = sorted(file.contexts.values(), key=lambda c: c.name)
    if console.output != "text":
        console.print(
            fmt.to_json(
                {
                    "current": file.current,
                    "contexts": [
                        {
                            "name": c.name,
                            "manager_url": c.manager_url,
                            "ca_file": None if c.ca_file is None else str(c.ca_file),
                            "user": None if c.session is None else c.session.email,
                            "session_expires_at": None
                            if c.session is None
                            else c.session.expires_at,
                        }
                        for c in contexts
                    ],
                }
            )
        )
        return 0
    if not contexts:
        console.note("no contexts: tether context add NAME URL, or tether login")
        return 0
    rows = [
        [
            fmt.styled("*", "bold green") if c.name == file.current else "",
            c.name,
            c.manager_url,
            str(c.ca_file) if c.ca_file else "(system CAs)",
            _session_text(c),
        ]
        for c in contexts
    ]
    console.print(fmt.table(("CURRENT", "NAME", "URL", "CA FILE", "SESSION"), rows))
    return 0


def cmd_context_use(console: Console, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    file = _file(env)
    file.current = file.get(args.name).name
    file.save()
    console.note(f"now using context {args.name}")
    return 0


def cmd_context_add(console: Console, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    name = check_name(args.name)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"manager URL {args.url!r} must be https://HOST[:PORT]")
    ca: Path | None = args.ca_file
    if ca is not None:
        if not ca.is_file():
            raise UsageError(f"CA file {ca} not found (from --ca-file)")
        ca = ca.resolve()  # a later command may run from another directory
    file = _file(env)
    before = file.contexts.get(name)
    # The same manager keeps its session; another one starts without.
    same = before is not None and before.manager_url.rstrip("/") == args.url.rstrip("/")
    session = before.session if same and before is not None else None
    file.put(NamedContext(name, args.url.rstrip("/"), ca, session))
    if args.use:
        file.current = name
    file.save()
    verb = "updated" if before is not None else "added"
    console.note(f"context {name} {verb}{' and in use' if file.current == name else ''}")
    return 0


def cmd_context_remove(console: Console, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    file = _file(env)
    file.remove(args.name)
    file.save()
    # The session is forgotten here only: `tether logout` first ends it on the manager.
    console.note(f"context {args.name} removed")
    return 0


def add_context_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    context = groups.add_parser(
        "context", help="saved managers (URL, CA, session) to switch between"
    ).add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = context.add_parser("list", parents=[output], help="list contexts; * marks the current")
    p.set_defaults(local=cmd_context_list)
    p = context.add_parser("use", parents=[output], help="make a context the current one")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(local=cmd_context_use)
    p = context.add_parser("add", parents=[output], help="add or change a context")
    p.add_argument("name", metavar="NAME")
    p.add_argument("url", metavar="URL", help="the manager, https://HOST:PORT")
    p.add_argument("--ca-file", type=Path, metavar="PEM", help="the manager's CA")
    p.add_argument("--use", action="store_true", help="make it the current context")
    p.set_defaults(local=cmd_context_add)
    p = context.add_parser("remove", parents=[output], help="forget a context and its session")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(local=cmd_context_remove)
