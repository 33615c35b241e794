"""The flags of a token's scope, the same in ``tether token create`` and ``tether-manager
token create``, and the request they make. Here, beside the wire model, so that the host
command does not import the client (and its HTTP stack) to parse its arguments."""

from __future__ import annotations

import argparse

from manager.schemas.tasks import TokenCreate

__all__ = ["add_scope_arguments", "token_request"]


def add_scope_arguments(parser: argparse.ArgumentParser) -> None:
    """The scope flags of ``token create``, the same in ``tether`` and ``tether-manager``."""
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="APP[/ENV]",
        help="where its delegates may run tasks: an application (all its environments) or"
        " one environment; repeatable. Without --scope or --scope-env-type: the whole account",
    )
    parser.add_argument(
        "--scope-env-type",
        action="append",
        default=[],
        choices=("production", "non_production"),
        help="every environment of this type; repeatable",
    )
    parser.add_argument(
        "--selector",
        action="append",
        default=None,
        metavar="SELECTOR",
        help="a selector its delegates may claim; repeatable. Without it: any selector",
    )


def token_request(args: argparse.Namespace) -> TokenCreate:
    return TokenCreate(
        name=args.name,
        scope=args.scope,
        scope_env_types=args.scope_env_type,
        selectors=args.selector,
    )
