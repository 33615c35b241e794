"""The ``tether`` command: run and inspect tasks, list delegates, manage enrollment tokens.

    tether task run --selector linux -- make test     # submit, follow the log, exit like it
    tether task submit -- ./deploy.sh                 # print the task id and return
    tether --output json task list --state running

Exit status: what ``task run`` maps from the task (see :func:`exit_code_for`); 1 for an API
or connection error; 2 for a usage or configuration problem; 130 on Ctrl-C. Errors are
one ``error: ...`` line on stderr, never a traceback.

This module is the entry: arguments, configuration, and running a handler. The handlers
live in :mod:`manager.client.cli.tasks` (tasks, following a log) and :mod:`manager.client.cli.fleet`
(delegates, profiles, tokens); what they share is in :mod:`manager.client.cli.context`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TextIO
from urllib.parse import urlsplit

from pydantic import ValidationError

from manager.client import (
    ApiError,
    ConnectionFailed,
    InvalidResponse,
    TetherClient,
    TetherClientError,
)
from manager.client.cli.access import add_access_parsers
from manager.client.cli.audit import add_audit_parsers
from manager.client.cli.completion import add_completion_parser
from manager.client.cli.config_file import (
    ENV_CONTEXT,
    ConfigFile,
    check_name,
    config_dir,
    context_name_for,
)
from manager.client.cli.context import (
    EXIT_BAD_ANSWER,
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Context,
    Handler,
    LocalHandler,
    Prompt,
    UsageError,
    parse_when,
    terminal_prompt,
)
from manager.client.cli.contexts import add_context_parsers
from manager.client.cli.directory import add_directory_parsers
from manager.client.cli.directory_auth import add_directory_auth_commands
from manager.client.cli.fleet import (
    cmd_delegate_delete,
    cmd_delegate_drain,
    cmd_delegate_list,
    cmd_delegate_resume,
    cmd_profile_delete,
    cmd_profile_list,
    cmd_profile_set,
    cmd_token_create,
    cmd_token_list,
    cmd_token_revoke,
)
from manager.client.cli.incidents import add_incident_commands
from manager.client.cli.login import add_login_parsers
from manager.client.cli.manage import add_manage_commands
from manager.client.cli.output import Console
from manager.client.cli.retention import add_retention_parsers
from manager.client.cli.runbooks import add_runbook_parsers
from manager.client.cli.secrets import add_secret_parsers
from manager.client.cli.tasks import (
    cmd_deployments,
    cmd_task_cancel,
    cmd_task_get,
    cmd_task_list,
    cmd_task_logs,
    cmd_task_run,
    cmd_task_submit,
    parse_labels,
)
from manager.client.cli.verify import add_verify_parsers
from manager.schemas.tasks import TaskSubmit
from manager.schemas.token_flags import add_scope_arguments, token_request
from shared import __version__
from shared.protocol import Deployment, ShellPayload, TaskState

__all__ = [
    "DEFAULT_MANAGER_URL",
    "ENV_API_KEY",
    "ENV_CA_FILE",
    "ENV_MANAGER_URL",
    "Config",
    "build_parser",
    "build_submit",
    "main",
    "parse_assignments",
    "run_cli",
]

ENV_MANAGER_URL = "TETHER_MANAGER_URL"
ENV_CA_FILE = "TETHER_CA_FILE"
ENV_API_KEY = "TETHER_API_KEY"
DEFAULT_MANAGER_URL = "https://127.0.0.1:8443"
OUTPUT_FORMATS = ("text", "json", "yaml")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


# --- arguments -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tether", description="Run tasks on Tether delegates.")
    parser.add_argument(
        "--manager-url",
        metavar="URL",
        help=f"the manager (env {ENV_MANAGER_URL}; default {DEFAULT_MANAGER_URL})",
    )
    parser.add_argument(
        "--ca-file", metavar="PEM", type=Path, help=f"CA bundle to trust (env {ENV_CA_FILE})"
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key (env {ENV_API_KEY}, which keeps it out of the process list)",
    )
    parser.add_argument(
        "--context",
        metavar="NAME",
        help=f"use this saved context (env {ENV_CONTEXT}; see: tether context list)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--output", choices=OUTPUT_FORMATS, default="text")
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    # Every subcommand takes --output too; SUPPRESS keeps the global value when it is absent.
    output = _Parser(add_help=False)
    output.add_argument(
        "--output", choices=OUTPUT_FORMATS, default=argparse.SUPPRESS, help="text, json or yaml"
    )

    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    task = groups.add_parser("task", help="run, submit and inspect tasks").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    run = task.add_parser(
        "run", parents=[output], help="submit a shell task, follow its log, exit with its status"
    )
    _task_options(run)
    run.set_defaults(handler=cmd_task_run)
    submit = task.add_parser("submit", parents=[output], help="submit a shell task; print its id")
    _task_options(submit)
    submit.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="answer once the task is final (at most 60): exit with its status, as task run"
        " does (124 when the wait ran out first)",
    )
    submit.set_defaults(handler=cmd_task_submit)
    get = task.add_parser("get", parents=[output], help="show a task")
    get.add_argument("task_id", metavar="TASK", help=_TASK_REF)
    get.set_defaults(handler=cmd_task_get)
    ls = task.add_parser("list", parents=[output], help="list tasks, newest first")
    ls.add_argument("--state", choices=[s.value for s in TaskState])
    ls.add_argument("--delegate", metavar="NAME", help="a delegate's name or id")
    ls.add_argument("--name", metavar="NAME", help="tasks of this name")
    ls.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="all must match"
    )
    ls.add_argument("--app", metavar="APP")
    ls.add_argument("--app-env", metavar="ENV", help="an environment of --app")
    ls.add_argument("--limit", type=_positive_int, default=100)
    ls.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="created at or after: ISO time or e.g. 2h, 30m, 7d ago",
    )
    ls.add_argument(
        "--until",
        type=parse_when,
        metavar="WHEN",
        help="created before: ISO time or a duration",
    )
    ls.set_defaults(handler=cmd_task_list)
    history = groups.add_parser(
        "deployments", parents=[output], help="deployment history: tasks with deployment data"
    )
    history.add_argument("--app", metavar="APP")
    history.add_argument("--env", dest="app_env", metavar="ENV", help="an environment of --app")
    history.add_argument("--service", metavar="S")
    history.add_argument("--status", choices=[s.value for s in TaskState])
    history.add_argument("--limit", type=_positive_int, default=100)
    history.add_argument("--since", type=parse_when, metavar="WHEN", help="ISO time or e.g. 7d ago")
    history.add_argument("--until", type=parse_when, metavar="WHEN")
    history.set_defaults(handler=cmd_deployments)
    logs = task.add_parser("logs", parents=[output], help="print a task's log")
    logs.add_argument("task_id", metavar="TASK", help=_TASK_REF)
    logs.add_argument(
        "--timestamps", action="store_true", help="start each line with its time (RFC 3339)"
    )
    logs.add_argument("--tail", type=_non_negative_int, metavar="N", help="only the last N lines")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="follow until the task ends; exit like run"
    )
    logs.set_defaults(handler=cmd_task_logs)
    cancel = task.add_parser("cancel", parents=[output], help="cancel a task")
    cancel.add_argument("task_id", metavar="TASK", help=_TASK_REF)
    cancel.set_defaults(handler=cmd_task_cancel)

    delegate = groups.add_parser("delegate", help="delegates").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    delegate.add_parser("list", parents=[output], help="list delegates").set_defaults(
        handler=cmd_delegate_list
    )
    drain = delegate.add_parser(
        "drain", parents=[output], help="stop new work reaching a delegate; running tasks finish"
    )
    drain.add_argument("name", metavar="NAME", help="delegate name (every one of that name) or id")
    drain.set_defaults(handler=cmd_delegate_drain)
    resume = delegate.add_parser(
        "resume", parents=[output], help="let a drained delegate take tasks"
    )
    resume.add_argument("name", metavar="NAME", help="delegate name or id")
    resume.set_defaults(handler=cmd_delegate_resume)
    forget = delegate.add_parser(
        "delete", parents=[output], help="forget a delegate that is gone (frees its name and key)"
    )
    forget.add_argument("name", metavar="NAME", help="delegate name (every one of that name) or id")
    forget.add_argument("--force", action="store_true", help="even while it is connected")
    forget.set_defaults(handler=cmd_delegate_delete)

    profile = groups.add_parser("profile", help="delegate startup scripts").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    pset = profile.add_parser(
        "set", parents=[output], help="create or change a profile: runs on matching delegates"
    )
    pset.add_argument("name", metavar="NAME")
    pset.add_argument("--selector", action="append", default=[], metavar="S", help="repeatable")
    pset.add_argument("--interpreter", choices=("bash", "sh"), default="bash")
    pset.add_argument("--script-file", type=Path, required=True, metavar="FILE")
    pset.set_defaults(handler=cmd_profile_set)
    profile.add_parser("list", parents=[output], help="list profiles").set_defaults(
        handler=cmd_profile_list
    )
    pdel = profile.add_parser("delete", parents=[output], help="delete a profile")
    pdel.add_argument("name", metavar="NAME")
    pdel.set_defaults(handler=cmd_profile_delete)

    # Parsed by manager.bench (see main); listed here so `tether --help` shows it.
    groups.add_parser("bench", help="measure the task path (tether bench --help)", add_help=False)

    token = groups.add_parser("token", help="delegate enrollment tokens").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    create = token.add_parser("create", parents=[output], help="create a token (shown once)")
    create.add_argument("name", metavar="NAME")
    add_scope_arguments(create)
    create.set_defaults(handler=cmd_token_create)
    token.add_parser("list", parents=[output], help="list tokens").set_defaults(
        handler=cmd_token_list
    )
    revoke = token.add_parser("revoke", parents=[output], help="revoke a token")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(handler=cmd_token_revoke)
    add_audit_parsers(groups, output)
    add_retention_parsers(groups, output)
    add_secret_parsers(groups, output)
    add_access_parsers(groups, output)
    add_directory_parsers(groups, output)
    add_manage_commands(groups, output)
    add_login_parsers(groups, output)
    add_incident_commands(groups, output)
    add_verify_parsers(groups, output)
    add_runbook_parsers(groups, output)
    add_context_parsers(groups, output)
    add_completion_parser(groups, build_parser)
    add_directory_auth_commands(groups, output)
    return parser


_TASK_REF = "the task's id, a unique start of it, or its name"


def _task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="NAME", help="a name to find the task by")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--selector", action="append", default=[], metavar="S", help="repeatable")
    p.add_argument(
        "--app", metavar="APP", help="the application the task runs for (with --app-env)"
    )
    # Not --env, which sets environment variables.
    p.add_argument("--app-env", metavar="ENV", help="the application's environment (with --app)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="run time limit")
    p.add_argument("--queue-timeout", type=float, metavar="SECONDS", help="wait limit")
    p.add_argument("--max-attempts", type=int, default=1, metavar="N")
    p.add_argument("--idempotency-key", metavar="K")
    p.add_argument(
        "--secret-env", action="append", default=[], metavar="NAME=VALUE", help="masked env var"
    )
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--credential",
        action="append",
        default=[],
        metavar="SECRET",
        help="an ssh_key or winrm secret, given to the script as env and a key file",
    )
    p.add_argument("--interpreter", choices=("bash", "sh"), default="bash")
    p.add_argument("--working-dir", metavar="DIR")
    p.add_argument("--deploy-service", metavar="S", help="record a deployment of S (to --app-env)")
    p.add_argument("--deploy-env", metavar="E", help="without --app: the environment deployed to")
    p.add_argument("--deploy-artifact", metavar="A")
    p.add_argument("--deploy-version", metavar="V")
    p.add_argument(
        "--override-freeze",
        metavar="REASON",
        help="proceed through an active freeze window (needs override_freeze; audited)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no spinner, no summary")
    p.add_argument("words", nargs="*", metavar="-- COMMAND", help="run as typed (shell-quoted)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTION_OF_FIELD = {
    "timeout_s": "--timeout",
    "queue_timeout_s": "--queue-timeout",
    "max_attempts": "--max-attempts",
    "idempotency_key": "--idempotency-key",
    "selectors": "--selector",
    "secret_env": "--secret-env",
    "payload.env": "--env",
    "payload.script": "the command",
    "payload.working_dir": "--working-dir",
    "deployment.service": "--deploy-service",
    "app": "--app",
    "env": "--app-env",
    "deployment.environment": "--deploy-env",
    "deployment.artifact": "--deploy-artifact",
    "deployment.version": "--deploy-version",
    "name": "--name",
    "labels": "--label",
}


def parse_assignments(values: Sequence[str], option: str, *, secret: bool) -> dict[str, str]:
    """``NAME=VALUE`` words as a dict. A secret's text is never echoed in an error."""
    result: dict[str, str] = {}
    for number, item in enumerate(values, 1):
        name, sep, value = item.partition("=")
        if not sep:
            what = f"value #{number} (not shown)" if secret else repr(item)
            raise UsageError(f"{option} expects NAME=VALUE; {what} has no '='")
        if not _ENV_NAME.fullmatch(name):
            raise UsageError(
                f"{option}: {name!r} is not a variable name "
                "(letters, digits and _, not starting with a digit)"
            )
        if name in result:
            raise UsageError(f"{option}: {name} is given twice")
        result[name] = value
    return result


def build_submit(args: argparse.Namespace) -> TaskSubmit:
    """The TaskSubmit of ``task run`` / ``task submit``; UsageError for any bad option."""
    if not args.words:
        raise UsageError("no command given: put it after --, as in: tether task run -- make test")
    if (args.app is None) != (args.app_env is None):
        raise UsageError("--app and --app-env go together: give both or neither")
    env = parse_assignments(args.env, "--env", secret=False)
    secret_env = parse_assignments(args.secret_env, "--secret-env", secret=True)
    if both := sorted(env.keys() & secret_env.keys()):
        raise UsageError(f"{both[0]} is given both as --env and as --secret-env")
    deployment = None
    deploy = (args.deploy_service, args.deploy_env, args.deploy_artifact, args.deploy_version)
    if args.deploy_env and args.app_env and args.deploy_env != args.app_env:
        raise UsageError(
            f"--deploy-env {args.deploy_env} differs from --app-env {args.app_env}: "
            "a task for an environment deploys there (leave out --deploy-env)"
        )
    deploy_env = args.deploy_env or (args.app_env if args.deploy_service else None)
    if any(deploy) and not (args.deploy_service and deploy_env):
        raise UsageError(
            "--deploy-service needs an environment: --app with --app-env, or --deploy-env"
        )
    try:
        if args.deploy_service:
            deployment = Deployment(
                service=args.deploy_service,
                environment=deploy_env,
                artifact=args.deploy_artifact,
                version=args.deploy_version,
            )
        return TaskSubmit(
            # The words are quoted back, so `-- bash -c 'echo "$HOME"'` runs as typed.
            payload=ShellPayload(
                script=shlex.join(args.words),
                interpreter=args.interpreter,
                env=env,
                working_dir=args.working_dir,
                credential_secrets=args.credential,
            ),
            selectors=args.selector,
            timeout_s=args.timeout,
            queue_timeout_s=args.queue_timeout,
            max_attempts=args.max_attempts,
            idempotency_key=args.idempotency_key,
            secret_env=secret_env,
            deployment=deployment,
            app=args.app,
            env=args.app_env,
            override_freeze=args.override_freeze,
            name=args.name,
            labels=parse_labels(args.label),
        )
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = _OPTION_OF_FIELD.get(loc) or next(
            (opt for key, opt in _OPTION_OF_FIELD.items() if loc.startswith(key + ".")), loc
        )
        raise UsageError(f"{where}: {err['msg']}" if where else err["msg"]) from None


def _check_arguments(args: argparse.Namespace) -> None:
    """Usage errors before anything else, so they never depend on the network or a key."""
    handler = getattr(args, "handler", None)
    if handler in (cmd_task_run, cmd_task_submit):
        args.submit = build_submit(args)
    elif handler is cmd_token_create:
        try:
            token_request(args)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["loc"][:1] != ("name",):
                raise UsageError(f"--selector: {first['msg']}") from None
            raise UsageError(
                f"token name {args.name!r}: letters, digits, '.', '_' and '-', "
                "starting with a letter or digit; at most 128 characters"
            ) from None


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    manager_url: str
    ca_file: Path | None
    # An API key, or the token of the session `tether login` stored; None only for the
    # commands that log in.
    api_key: str | None = field(repr=False)
    session: bool = False
    config_dir: Path = field(default_factory=lambda: config_dir({}))
    # The context a login is stored in, and where the URL and CA came from (for hints).
    context: str = "default"
    url_source: str = "the default"
    ca_source: str = "the system's CAs"


def resolve_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Flags first (--context among them), then the environment, then the current context,
    then defaults. A context's session is used for its own manager URL only."""
    directory = config_dir(env)
    file = ConfigFile.load(directory)
    explicit = args.context or None
    chosen = explicit or env.get(ENV_CONTEXT) or file.current
    # `tether --context new --manager-url URL login` makes the context it names.
    making = bool(
        explicit
        and explicit not in file.contexts
        and args.manager_url
        and getattr(args, "anonymous", False)
    )
    named = file.get(chosen) if chosen and not making else None
    url, url_source = DEFAULT_MANAGER_URL, "the default"
    if args.manager_url:
        url, url_source = args.manager_url, "--manager-url"
    elif explicit and named is not None:
        url, url_source = named.manager_url, f"context {named.name!r}"
    elif env.get(ENV_MANAGER_URL):
        url, url_source = env[ENV_MANAGER_URL], ENV_MANAGER_URL
    elif named is not None:
        url, url_source = named.manager_url, f"context {named.name!r}"
    same = named is not None and named.manager_url.rstrip("/") == url.rstrip("/")
    holder = named if same else file.find_url(url)
    stored = holder.session if holder is not None and holder.session is not None else None
    if stored is not None and not stored.live:
        stored = None
    api_key = args.api_key or (None if explicit else env.get(ENV_API_KEY))
    if api_key:
        stored = None
    elif stored is not None:
        api_key = stored.token
    if not api_key and not getattr(args, "anonymous", False):
        where = f" to {url} (from {url_source})"
        raise UsageError(
            f"not logged in{where}: run tether login, or set {ENV_API_KEY} or --api-key"
        )
    ca_file: Path | None = None
    ca_source = "the system's CAs"
    if args.ca_file:
        ca_file, ca_source = args.ca_file, "--ca-file"
    elif env.get(ENV_CA_FILE) and not explicit:
        ca_file, ca_source = Path(env[ENV_CA_FILE]), ENV_CA_FILE
    elif holder is not None and holder.ca_file is not None:
        ca_file, ca_source = holder.ca_file, f"context {holder.name!r}"
    if ca_file is not None and not ca_file.is_file():
        raise UsageError(f"CA file {ca_file} not found (from {ca_source})")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"manager URL {url!r} must be https://HOST[:PORT] (from {url_source})")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UsageError(
            f"refusing to send the API key over plain http to {parts.hostname}: use https:// "
            f"in the manager URL (from {url_source}; plain http is for loopback only)"
        )
    context = explicit or (holder.name if holder is not None else context_name_for(url))
    return Config(
        manager_url=url,
        ca_file=ca_file,
        api_key=api_key or None,
        session=stored is not None,
        config_dir=directory,
        context=check_name(context),
        url_source=url_source,
        ca_source=ca_source,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_client(config: Config) -> TetherClient:
    return TetherClient(config.manager_url, api_key=config.api_key, ca_file=config.ca_file)


# --- entry points --------------------------------------------------------------------------


def run_cli(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    client_factory: Callable[[Config], TetherClient] = default_client,
    interrupted: asyncio.Event | None = None,
    handle_signals: bool = False,
    prompt: Prompt = terminal_prompt,
    stdin: TextIO | None = None,
    sso_poll_s: float = 1.0,
) -> int:
    """The whole command, with its world passed in (tests give their own streams and client).

    ``interrupted`` stands for Ctrl-C while a task is followed; with ``handle_signals`` a
    real SIGINT sets it.
    """
    console = Console(out, err)
    argv = list(argv)
    debug = "--debug" in (argv[: argv.index("--")] if "--" in argv else argv)
    config: Config | None = None
    try:
        try:
            args = build_parser().parse_args(list(argv))
        except SystemExit as exc:  # --help and --version exit by themselves
            return exc.code if isinstance(exc.code, int) else 0
        console.configure(env, args.output)
        _check_arguments(args)
        local: LocalHandler | None = getattr(args, "local", None)
        if local is not None:  # needs no manager: contexts, completion
            return local(console, args, env)
        config = resolve_config(args, env)
        try:
            client = client_factory(config)
        except TetherClientError as exc:
            raise UsageError(str(exc)) from None
        ctx = Context(
            client,
            console,
            args.output,
            interrupted or asyncio.Event(),
            handle_signals,
            prompt=prompt,
            stdin=stdin,
            config_dir=config.config_dir,
            manager_url=config.manager_url,
            session=config.session,
            sso_poll_s=sso_poll_s,
            context_name=config.context,
            ca_file=config.ca_file,
        )
        return asyncio.run(_amain(ctx, args))
    except UsageError as exc:
        _traceback(console, debug)
        console.note(f"error: {exc}")
        return EXIT_USAGE
    except ApiError as exc:
        _traceback(console, debug)
        hint = ""
        if exc.status == 401 and exc.code not in _LOGIN_REFUSALS:
            hint = f" (log in again: tether login; or check --api-key or {ENV_API_KEY})"
        console.note(f"error: {exc}{hint}")
        return EXIT_ERROR
    except ConnectionFailed as exc:
        _traceback(console, debug)
        console.note(f"error: {exc.message}{_connection_hint(exc, config)}")
        return EXIT_USAGE if exc.kind in ("tls", "protocol") else EXIT_UNREACHABLE
    except InvalidResponse as exc:
        _traceback(console, debug)
        where = f" (is {config.manager_url} a Tether manager?)" if config else ""
        console.note(f"error: {exc}{where}")
        return EXIT_BAD_ANSWER
    except TetherClientError as exc:
        _traceback(console, debug)
        console.note(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR  # the reader went away (| head); nothing left to say to it
    except OSError as exc:
        _traceback(console, debug)
        console.note(f"error: {exc}")
        return EXIT_ERROR
    except Exception as exc:
        # A bug: one line, and the traceback only when asked for.
        _traceback(console, debug)
        console.note(
            f"error: internal error ({type(exc).__name__}); "
            "run again with --debug for the traceback"
        )
        return EXIT_INTERNAL


def _traceback(console: Console, debug: bool) -> None:
    if debug:
        console.note(traceback.format_exc().rstrip())


def _connection_hint(exc: ConnectionFailed, config: Config | None) -> str:
    """Which setting to change, and where the one in use came from."""
    if config is None:
        return ""
    match exc.kind:
        case "tls":
            return (
                f" (CA from {config.ca_source}: give the manager's CA with --ca-file or "
                f"{ENV_CA_FILE}, or in the context: tether context add)"
            )
        case "protocol":
            return f" (URL from {config.url_source}: fix its scheme there)"
        case "unreachable" | "timeout":
            return f" (URL from {config.url_source}: is the manager running there?)"
        case _:
            return ""


# A refused login explains itself: no hint about credentials the user did not send.
_LOGIN_REFUSALS = frozenset({"invalid_credentials", "invalid_totp", "totp_required"})


async def _amain(ctx: Context, args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    async with ctx.client:
        return await handler(ctx, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["bench"]:
        # The benchmark starts its own manager unless told otherwise: no API key needed.
        from manager.bench import main_bench

        return main_bench(args[1:])
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            # Task output in an encoding this terminal lacks must not end the command.
            stream.reconfigure(errors="replace")
    code = run_cli(
        args,
        env=os.environ,
        out=sys.stdout,
        err=sys.stderr,
        handle_signals=True,
    )
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Keep the interpreter's own flush at exit from complaining about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
