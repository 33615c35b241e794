"""asyncio helpers the manager and the delegate share."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "first_of"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they have ended.

    Their own CancelledError (and any other exception) stays theirs. A cancel aimed at the
    caller still reaches the caller: ``with suppress(CancelledError): await task`` would
    swallow one that lands while it waits, and a delegate told to stop went on polling a
    manager that was gone because of exactly that.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    # gather is itself cancelled by a cancel of the caller, whatever return_exceptions says.
    await asyncio.gather(*live, return_exceptions=True)


async def first_of(*events: asyncio.Event, timeout: float) -> None:
    """Until any of ``events`` is set, or ``timeout``."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
