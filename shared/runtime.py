"""Running the event loop: uvloop where it is installed, asyncio's own loop otherwise.

With TLS, uvloop holds an idle connection in a fraction of the memory asyncio's loop needs
(whose TLS transport allocates a large read buffer per connection), and it is faster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, prefer_uvloop: bool = True) -> T:
    if not prefer_uvloop:
        return asyncio.run(coro)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result
