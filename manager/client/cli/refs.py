"""What a user may type for a task: its id, the start of its id, or its name.

    tether task get task_01hx         # a unique prefix of the id
    tether task logs nightly-backup   # the newest task of that name... if only one has it

An ambiguous prefix or name is a usage error listing the candidates (exit 2), never a
guess; one that matches nothing is the manager's 404.
"""

from __future__ import annotations

from manager.client import ApiError
from manager.client.cli import output as fmt
from manager.client.cli.context import Context, UsageError
from manager.schemas.tasks import TaskView

__all__ = ["resolve_task"]

# How many candidates an ambiguity error lists.
_SHOWN = 5


async def resolve_task(ctx: Context, ref: str) -> TaskView:
    """The task ``ref`` names (an id, a unique id prefix, or a unique name)."""
    try:
        return await ctx.client.get_task(ref)
    except ApiError as exc:
        if exc.status != 404:
            raise
        missing = exc
    found: dict[str, TaskView] = {}
    try:
        if ref.replace("_", "").isalnum() and ref == ref.lower():
            for task in await ctx.client.list_tasks(id_prefix=ref, limit=_SHOWN + 1):
                found[task.id] = task
        if not found:
            for task in await ctx.client.list_tasks(name=ref, limit=_SHOWN + 1):
                found[task.id] = task
    except ApiError:
        raise missing from None  # the search is a courtesy: its refusal is not the answer
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise missing
    shown = ", ".join(
        f"{t.id} ({t.name or t.state.value}, {fmt.ago(t.created_at)})"
        for t in list(found.values())[:_SHOWN]
    )
    more = " and more" if len(found) > _SHOWN else ""
    raise UsageError(f"{ref!r} matches several tasks: {shown}{more}; give more of the id")
