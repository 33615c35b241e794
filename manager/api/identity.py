"""Who is making a request: set by the authentication middleware, read by whatever records or
limits what the request does (the audit trail, the per-key rate limit)."""

from __future__ import annotations

from aiohttp import web

from manager.core.identity import SYSTEM, Actor

__all__ = ["ACTOR_KEY", "CLIENT_IP_KEY", "actor_of", "client_ip"]

ACTOR_KEY: web.RequestKey[Actor] = web.RequestKey("tether_actor", Actor)
# The client's address as judged through trusted proxies, when the allowlist judged it.
CLIENT_IP_KEY: web.RequestKey[str] = web.RequestKey("tether_client_ip", str)


def actor_of(request: web.Request) -> Actor:
    """The request's actor; SYSTEM for a route that takes no user credentials."""
    actor = request.get(ACTOR_KEY)
    return actor if isinstance(actor, Actor) else SYSTEM


def client_ip(request: web.Request) -> str:
    """The peer's address. (Forwarded addresses are honoured only from trusted proxies; the
    allowlist decides that and stores its answer here first.)"""
    forwarded = request.get(CLIENT_IP_KEY)
    if isinstance(forwarded, str):
        return forwarded
    return request.remote or ""
