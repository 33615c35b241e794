"""The IP allowlist's decisions. Pure: addresses and settings in, answers out.

Who is the client? The peer of the TCP connection, unless the peer is a trusted proxy: then
``X-Forwarded-For`` is read from the right, each proxy having appended the address it saw,
and the client is the rightmost address that is not itself a trusted proxy. Addresses to the
left of it were written by the client, who can write anything, so they are never read. An
untrusted peer's header is ignored whatever it says.

Is the client allowed? Always while the allowlist is off; otherwise only when an enabled
entry covers its address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from manager.records import AccessSettings, AllowlistEntry

__all__ = [
    "Address",
    "Network",
    "Snapshot",
    "client_address",
    "parse_address",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Every request parses its peer's address (and any forwarded hops): cached, a client's
# address is parsed once. The answer is immutable; the bound keeps a flood of made-up
# X-Forwarded-For values from growing it.
@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address | None:
    """An address as peers and proxies write it; IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what
    a dual-stack socket reports) becomes the IPv4 address, so IPv4 entries cover it."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443", as some proxies write
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _within(addr: Address, networks: Iterable[Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address as judged through ``trusted`` proxies; None when it cannot be
    told (no peer, or a trusted proxy passed on a malformed header), which is refused."""
    addr = parse_address(peer) if peer else None
    if addr is None or not _within(addr, trusted):
        return addr
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        addr = parse_address(hop)
        if addr is None:
            # Written by a trusted proxy (everything to its right was): a broken proxy, or
            # a header it passed on unchecked. Guessing could let a spoof through.
            return None
        if not _within(addr, trusted):
            return addr
    # Every hop is a trusted proxy: the leftmost one is where the request came from.
    return addr


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The allowlist as one replica sees it: settings and entries, parsed once."""

    enabled: bool
    entries: tuple[AllowlistEntry, ...]
    trusted_proxies: tuple[Network, ...]
    networks: tuple[Network, ...]

    @classmethod
    def of(cls, settings: AccessSettings, entries: Sequence[AllowlistEntry]) -> Snapshot:
        return cls(
            enabled=settings.allowlist_enabled,
            entries=tuple(entries),
            # Stored values were checked on the way in; a bad one is skipped, not fatal.
            trusted_proxies=tuple(_networks(settings.trusted_proxies)),
            networks=tuple(_networks(e.cidr for e in entries if e.enabled)),
        )

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> Address | None:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def allows(self, addr: Address | None) -> bool:
        if not self.enabled:
            return True
        return addr is not None and _within(addr, self.networks)


def _networks(texts: Iterable[str]) -> list[Network]:
    out: list[Network] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return out
