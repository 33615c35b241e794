"""The ``tether`` commands that administer the fleet: delegates (list, drain, resume),
their startup profiles, and enrollment tokens.
"""

from __future__ import annotations

import argparse

from manager.client.cli import output as fmt
from manager.client.cli.context import Context, UsageError
from manager.schemas.tasks import DelegateView, ProfilePut
from manager.schemas.token_flags import token_request

__all__ = [
    "cmd_delegate_delete",
    "cmd_delegate_drain",
    "cmd_delegate_list",
    "cmd_delegate_resume",
    "cmd_profile_delete",
    "cmd_profile_list",
    "cmd_profile_set",
    "cmd_token_create",
    "cmd_token_list",
    "cmd_token_revoke",
]


async def cmd_delegate_list(ctx: Context, args: argparse.Namespace) -> int:
    delegates = await ctx.client.list_delegates()
    if ctx.json:
        ctx.console.print(
            fmt.to_json({"delegates": [d.model_dump(mode="json") for d in delegates]})
        )
    elif delegates:
        ctx.console.print(fmt.delegate_table(delegates))
    else:
        ctx.console.note("no delegates")
    return 0


async def cmd_delegate_delete(ctx: Context, args: argparse.Namespace) -> int:
    deleted = await ctx.client.delete_delegate(args.name, force=args.force)
    return _show_delegates(ctx, deleted, "deleted")


async def cmd_delegate_drain(ctx: Context, args: argparse.Namespace) -> int:
    return _show_delegates(ctx, await ctx.client.drain_delegate(args.name), "draining")


async def cmd_delegate_resume(ctx: Context, args: argparse.Namespace) -> int:
    return _show_delegates(ctx, await ctx.client.resume_delegate(args.name), "resumed")


def _show_delegates(ctx: Context, delegates: list[DelegateView], what: str) -> int:
    if ctx.json:
        ctx.console.print(
            fmt.to_json({"delegates": [d.model_dump(mode="json") for d in delegates]})
        )
    else:
        for d in delegates:
            ctx.console.print(f"{d.name} ({d.id}) {what}; running: {len(d.running)}")
    return 0


async def cmd_profile_set(ctx: Context, args: argparse.Namespace) -> int:
    try:
        script = args.script_file.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {args.script_file}: {exc.strerror}") from None
    body = ProfilePut(selectors=args.selector, script=script, interpreter=args.interpreter)
    view = await ctx.client.put_profile(args.name, body)
    if ctx.json:
        ctx.console.print(fmt.to_json(view.model_dump(mode="json")))
    else:
        ctx.console.print(f"profile {view.name} saved; started on {view.runs_started} delegate(s)")
    return 0


async def cmd_profile_list(ctx: Context, args: argparse.Namespace) -> int:
    profiles = await ctx.client.list_profiles()
    if ctx.json:
        ctx.console.print(fmt.to_json({"profiles": [p.model_dump(mode="json") for p in profiles]}))
    elif profiles:
        rows = [
            [
                p.name,
                ",".join(p.selectors) or "(all delegates)",
                p.interpreter,
                p.script.count("\n") + 1,
            ]
            for p in profiles
        ]
        ctx.console.print(fmt.table(("NAME", "SELECTORS", "INTERPRETER", "LINES"), rows))
    else:
        ctx.console.note("no profiles")
    return 0


async def cmd_profile_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_profile(args.name)
    ctx.console.note(f"profile {args.name} deleted")
    return 0


async def cmd_token_create(ctx: Context, args: argparse.Namespace) -> int:
    token = await ctx.client.create_token(args.name, token_request(args))
    if ctx.json:
        ctx.console.print(fmt.to_json(token))
    else:
        ctx.console.note(f"token {token.name} created ({token.id}); it is shown once, keep it now:")
        if token.scope is not None:
            ctx.console.note(f"scope: {fmt.scope_text(token.scope)}")
        ctx.console.print(token.token)
    return 0


async def cmd_token_list(ctx: Context, args: argparse.Namespace) -> int:
    tokens = await ctx.client.list_tokens()
    if ctx.json:
        ctx.console.print(fmt.to_json({"tokens": [t.model_dump(mode="json") for t in tokens]}))
    elif tokens:
        ctx.console.print(fmt.token_table(tokens))
    else:
        ctx.console.note("no tokens")
    return 0


async def cmd_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    token = await ctx.client.revoke_token(args.name)
    ctx.console.print(fmt.to_json(token) if ctx.json else f"token {token.name} revoked")
    return 0
