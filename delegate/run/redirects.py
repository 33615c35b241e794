"""Which redirects an ``http`` task follows, and what it carries along.

A task's headers often hold credentials (``Authorization``, ``X-Api-Key: ${secrets...}``),
and a redirect is chosen by the server, not by the task's author: following one to another
origin would hand those credentials to whoever the server names. So (``follow_redirects``):

- ``none``: a 3xx is the answer;
- ``same_origin`` (the default): followed while it stays on the URL's origin (scheme, host,
  port); a redirect elsewhere is the answer, and the log says where it pointed;
- ``any``: followed anywhere, but once the request leaves the first origin it no longer
  carries ``Authorization``, ``Cookie``, ``Proxy-Authorization``, or any header whose value
  holds a secret the task's masker knows (a rendered secret expression). A body that holds
  such a secret is never re-sent to another origin: that redirect is not followed.

What is dropped stays dropped for the rest of the chain, even if it comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from yarl import URL

__all__ = [
    "MAX_REDIRECTS",
    "FollowPolicy",
    "Hop",
    "Stop",
    "next_hop",
    "origin",
]

FollowPolicy = Literal["none", "same_origin", "any"]
# As browsers and aiohttp: a loop ends, a long chain is a misconfiguration.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class Hop:
    """One request of the chain."""

    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Stop:
    """A redirect not followed: the 3xx is the answer, and ``reason`` goes to the log."""

    reason: str


def origin(url: URL) -> tuple[str, str, int | None]:
    """(scheme, host, port), the port made explicit (yarl fills in 80/443)."""
    return url.scheme.lower(), (url.host or "").lower(), url.port


def _describe(url: URL) -> str:
    # The origin only: a Location's path or query may carry a token.
    return f"{url.scheme}://{url.host}:{url.port}"


def next_hop(
    policy: FollowPolicy,
    first: URL,
    current: Hop,
    status: int,
    location: str | None,
    holds_secret: Callable[[str], bool],
) -> Hop | Stop | None:
    """The next request after ``current`` answered ``status``; None when the answer is final
    (not a redirect, or ``policy`` is none); :class:`Stop` when a redirect is not followed."""
    if status not in _REDIRECTS or location is None or policy == "none":
        return None
    try:
        target = current.url.join(URL(location))
    except (ValueError, TypeError):
        return Stop(f"redirect {status} has an unusable Location; not followed")
    if target.scheme not in ("http", "https") or not target.host:
        return Stop(f"redirect {status} to a non-http(s) location; not followed")
    foreign = origin(target) != origin(first)
    if foreign and policy == "same_origin":
        return Stop(
            f"redirect {status} to another origin ({_describe(target)}) not followed"
            " (follow_redirects: same_origin)"
        )
    method, body = current.method, current.body
    # What every client does: 303 always, and 301/302 of a POST, become a GET without body.
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
    headers = dict(current.headers)
    if foreign:
        headers = {
            k: v
            for k, v in headers.items()
            if k.lower() not in _CREDENTIAL_HEADERS and not holds_secret(v)
        }
        if body is not None and holds_secret(body.decode("utf-8", "surrogateescape")):
            return Stop(
                f"redirect {status} to another origin ({_describe(target)}) would re-send a body"
                " holding a secret; not followed"
            )
    if body is None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return Hop(method, target, headers, body)
