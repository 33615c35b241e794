"""The IP allowlist: judging the client (IPv4, IPv6, trusted proxies, spoofed headers), the
guard in front of the user API, the lock-out refusal, the host-side way back, the CLI.

aiohttp's TestClient always connects from 127.0.0.1, so the app tests make 127.0.0.1 a
trusted proxy and speak for other clients through X-Forwarded-For; the judging function
itself is tested directly with any peer.
"""

from __future__ import annotations

import io
import ipaddress
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from manager.access.tokens import create_token
from manager.client import ApiError, TetherClient
from manager.client.cli.main import Config, run_cli
from manager.core.allowlist import Network, Snapshot, client_address, parse_address, parse_cidr
from manager.records import AccessSettings, AllowlistEntry
from manager.schemas.access import AllowlistEntryCreate, AllowlistEntryView, AllowlistView
from manager.server.app import open_store
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.api.test_api import registration
from tests.manager.conftest import PG_URL, StoreMaker

BIN = Path(sys.executable).parent


def nets(*cidrs: str) -> list[Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("203.0.113.7", "203.0.113.7/32"),
        (" 2001:db8::/32 ", "2001:db8::/32"),
        ("2001:DB8::1", "2001:db8::1/128"),
    ],
)
def test_a_cidr_or_a_single_address_is_accepted(text: str, network: str) -> None:
    assert str(parse_cidr(text)) == network


def test_host_bits_are_refused_with_the_range_meant() -> None:
    meant = r"10\.0\.0\.1/8 has host bits set; did you mean 10\.0\.0\.0/8\?"
    with pytest.raises(ValueError, match=meant):
        parse_cidr("10.0.0.1/8")


@pytest.mark.parametrize("text", ["", "example.com", "10.0.0.0/33", "10.0.0/8x", "::g/64"])
def test_what_is_not_a_cidr_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address or CIDR range"):
        parse_cidr(text)


def test_an_ipv4_mapped_ipv6_peer_is_its_ipv4_address() -> None:
    assert parse_address("::ffff:203.0.113.9") == ipaddress.ip_address("203.0.113.9")


def test_a_bracketed_ipv6_address_with_a_port_is_read() -> None:
    assert parse_address("[2001:db8::1]:443") == ipaddress.ip_address("2001:db8::1")


# -- who is the client -----------------------------------------------------------------------


def judge(peer: str | None, xff: Sequence[str], trusted: Sequence[str]) -> str | None:
    addr = client_address(peer, xff, nets(*trusted))
    return None if addr is None else str(addr)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert judge("198.51.100.7", [], []) == "198.51.100.7"


def test_an_untrusted_peer_cannot_spoof_its_address_with_x_forwarded_for() -> None:
    assert judge("198.51.100.7", ["203.0.113.9"], ["10.0.0.0/8"]) == "198.51.100.7"


def test_a_trusted_proxy_forwards_the_client_address() -> None:
    assert judge("10.0.0.2", ["203.0.113.9"], ["10.0.0.0/8"]) == "203.0.113.9"


def test_what_the_client_wrote_left_of_the_last_untrusted_hop_is_never_read() -> None:
    # The client sent "X-Forwarded-For: 203.0.113.9"; the proxy appended its real address.
    assert judge("10.0.0.2", ["203.0.113.9, 198.51.100.7"], ["10.0.0.0/8"]) == "198.51.100.7"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    xff = ["198.51.100.7, 10.0.0.5", "10.0.0.6"]  # two headers are one list
    assert judge("10.0.0.2", xff, ["10.0.0.0/8"]) == "198.51.100.7"


def test_when_every_hop_is_a_trusted_proxy_the_first_one_is_the_client() -> None:
    assert judge("10.0.0.2", ["10.0.0.9, 10.0.0.5"], ["10.0.0.0/8"]) == "10.0.0.9"


def test_a_trusted_proxy_without_a_header_is_the_client_itself() -> None:
    assert judge("10.0.0.2", [], ["10.0.0.0/8"]) == "10.0.0.2"


def test_ipv6_clients_and_proxies_are_judged_alike() -> None:
    xff = ["2001:db8:1::9, 2001:db8:ffff::2"]
    assert judge("2001:db8:ffff::1", xff, ["2001:db8:ffff::/48"]) == "2001:db8:1::9"


def test_a_malformed_hop_behind_trusted_proxies_leaves_the_client_unknown() -> None:
    assert judge("10.0.0.2", ["203.0.113.9, not-an-ip"], ["10.0.0.0/8"]) is None


def test_no_peer_is_no_client() -> None:
    assert judge(None, ["203.0.113.9"], ["10.0.0.0/8"]) is None


# -- is the client allowed -------------------------------------------------------------------


def snapshot(enabled: bool, *entries: tuple[str, bool]) -> Snapshot:
    rows = [AllowlistEntry(f"ipa_{i}", c, "", on, 0.0) for i, (c, on) in enumerate(entries)]
    return Snapshot.of(AccessSettings(allowlist_enabled=enabled), rows)


def test_a_disabled_allowlist_allows_everyone_even_the_unknown() -> None:
    s = snapshot(False, ("10.0.0.0/8", True))
    assert s.allows(ipaddress.ip_address("198.51.100.7"))
    assert s.allows(None)


@pytest.mark.parametrize(
    ("addr", "allowed"),
    [
        ("203.0.113.9", True),
        ("203.0.114.1", False),
        ("2001:db8:5::1", True),
        ("2001:db9::1", False),
        ("192.0.2.1", False),  # its entry is disabled
    ],
)
def test_an_enabled_allowlist_allows_only_what_enabled_entries_cover(
    addr: str, allowed: bool
) -> None:
    s = snapshot(True, ("203.0.113.0/24", True), ("2001:db8::/32", True), ("192.0.2.0/24", False))
    assert s.allows(ipaddress.ip_address(addr)) is allowed


def test_an_enabled_allowlist_refuses_a_client_it_cannot_tell() -> None:
    assert not snapshot(True, ("0.0.0.0/0", True)).allows(None)


# -- through the app -------------------------------------------------------------------------

PROXY = {"X-Forwarded-For": "203.0.113.9"}  # an allowed office address, through the proxy


async def add(m: Manager, cidr: str, **headers: str) -> dict[str, Any]:
    status, entry = await m.call("POST", "/api/v1/allowlist/entries", {"cidr": cidr}, **headers)
    assert status == 201, entry
    return dict(entry)


async def behind_proxy(m: Manager) -> dict[str, Any]:
    """127.0.0.1 (the test client) is the trusted proxy; the office and a v6 range allowed."""
    assert (await m.call("PUT", "/api/v1/allowlist/trusted-proxies", {"proxies": ["127.0.0.1"]}))[
        0
    ] == 200
    office = await add(m, "203.0.113.0/24")
    await add(m, "2001:db8::/32")
    status, view = await m.call("POST", "/api/v1/allowlist/enable", {}, **PROXY)
    assert (status, view["enabled"]) == (200, True), view
    return office


@pytest.mark.parametrize(
    ("client", "status"),
    [("203.0.113.9", 200), ("198.51.100.7", 403), ("2001:db8::5", 200), ("2001:db9::5", 403)],
)
async def test_clients_behind_a_trusted_proxy_are_judged_by_their_own_address(
    m: Manager, client: str, status: int
) -> None:
    await behind_proxy(m)
    got, _ = await m.call("GET", "/api/v1/tasks", **{"X-Forwarded-For": client})
    assert got == status


async def test_the_403_names_the_client_address_and_nothing_more(m: Manager) -> None:
    await behind_proxy(m)
    status, body = await m.call(
        "GET", "/api/v1/tasks", **{"X-Forwarded-For": "10.9.9.9, 198.51.100.7"}
    )
    assert (status, body["error"]["code"]) == (403, "ip_not_allowed")
    assert body["error"]["message"] == "198.51.100.7 is not in the IP allowlist"


async def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(m: Manager) -> None:
    await behind_proxy(m)
    no_proxies = {"proxies": [], "confirm": True}
    status, _ = await m.call("PUT", "/api/v1/allowlist/trusted-proxies", no_proxies, **PROXY)
    assert status == 200
    # 127.0.0.1 is no proxy now: its claim to be the office is just a header it wrote.
    status, body = await m.call("GET", "/api/v1/tasks", **PROXY)
    assert (status, body["error"]["message"]) == (403, "127.0.0.1 is not in the IP allowlist")


async def test_the_allowlist_guards_unknown_paths_too(m: Manager) -> None:
    await behind_proxy(m)
    resp = await m.client.get("/api/v1/nowhere", headers={"X-Forwarded-For": "198.51.100.7"})
    assert resp.status == 403


async def test_health_probes_and_the_delegate_plane_are_never_judged(m: Manager) -> None:
    await behind_proxy(m)
    outsider = {"X-Forwarded-For": "198.51.100.7"}
    for path in ("/healthz", "/readyz"):
        assert (await m.client.get(path, headers=outsider)).status == 200
    _, token = await create_token(m.store, "t")
    resp = await m.client.post(
        "/api/v1/delegate/register",
        json=registration(),
        headers={"Authorization": f"Bearer {token}", **outsider},
    )
    assert resp.status == 200


async def test_the_listing_shows_the_caller_address_as_judged(m: Manager) -> None:
    await behind_proxy(m)
    status, view = await m.call("GET", "/api/v1/allowlist", **PROXY)
    assert status == 200
    assert (view["enabled"], view["your_ip"], view["trusted_proxies"]) == (
        True,
        "203.0.113.9",
        ["127.0.0.1/32"],
    )
    assert [e["cidr"] for e in view["entries"]] == ["203.0.113.0/24", "2001:db8::/32"]


async def test_bad_and_duplicate_entries_are_refused(m: Manager) -> None:
    status, body = await m.call("POST", "/api/v1/allowlist/entries", {"cidr": "10.0.0.1/8"})
    assert (status, body["error"]["field"]) == (400, "cidr")
    assert "did you mean 10.0.0.0/8" in body["error"]["message"]
    await add(m, "10.0.0.0/8")
    status, body = await m.call("POST", "/api/v1/allowlist/entries", {"cidr": "10.0.0.0/8"})
    assert (status, body["error"]["code"]) == (409, "conflict")


async def test_a_change_reaches_another_replica_within_seconds(
    tmp_path: Path, store: Store
) -> None:
    clock = Clock()
    other_store = open_store(tmp_path / "db")  # the same database as `store`
    await other_store.open()
    try:
        async with manager(tmp_path, store, clock) as a, manager(tmp_path, other_store, clock) as b:
            assert (await b.call("GET", "/api/v1/tasks"))[0] == 200  # b has read the allowlist
            await add(a, "203.0.113.0/24")
            assert (await a.call("POST", "/api/v1/allowlist/enable", {"confirm": True}))[0] == 200
            assert (await a.call("GET", "/api/v1/tasks"))[0] == 403  # a: at once
            clock.advance(1.0)
            assert (await b.call("GET", "/api/v1/tasks"))[0] == 200  # b: not yet...
            clock.advance(1.0)
            assert (await b.call("GET", "/api/v1/tasks"))[0] == 403  # ...within 2 s
    finally:
        await other_store.close()


# -- no accidental lock-out ------------------------------------------------------------------


async def test_enabling_an_allowlist_that_refuses_the_caller_needs_confirmation(
    m: Manager,
) -> None:
    await add(m, "203.0.113.0/24")
    status, body = await m.call("POST", "/api/v1/allowlist/enable", {})
    assert (status, body["error"]["code"]) == (409, "would_lock_out")
    assert "127.0.0.1" in body["error"]["message"]
    assert "tether-manager allowlist disable" in body["error"]["message"]
    assert not (await m.store.access_settings()).allowlist_enabled
    status, _ = await m.call("POST", "/api/v1/allowlist/enable", {"confirm": True})
    assert status == 200
    assert (await m.call("GET", "/api/v1/tasks"))[0] == 403


async def test_enabling_an_allowlist_that_covers_the_caller_needs_nothing_more(
    m: Manager,
) -> None:
    await add(m, "127.0.0.0/8")
    resp = await m.client.post("/api/v1/allowlist/enable", headers=m.auth())  # no body at all
    assert resp.status == 200
    assert (await m.call("GET", "/api/v1/tasks"))[0] == 200


async def test_removing_the_entry_that_lets_the_caller_in_needs_confirmation(
    m: Manager,
) -> None:
    office = await behind_proxy(m)
    path = f"/api/v1/allowlist/entries/{office['id']}"
    status, body = await m.call("DELETE", path, **PROXY)
    assert (status, body["error"]["code"]) == (409, "would_lock_out")
    assert len(await m.store.list_allowlist()) == 2
    assert (await m.call("DELETE", f"{path}?confirm=true", **PROXY))[0] == 200
    assert (await m.call("GET", "/api/v1/tasks", **PROXY))[0] == 403


async def test_disabling_the_entry_that_lets_the_caller_in_needs_confirmation(
    m: Manager,
) -> None:
    office = await behind_proxy(m)
    path = f"/api/v1/allowlist/entries/{office['id']}/disable"
    assert (await m.call("POST", path, {}, **PROXY))[0] == 409
    status, entry = await m.call("POST", path, {"confirm": True}, **PROXY)
    assert (status, entry["enabled"]) == (200, False)


async def test_entries_the_caller_does_not_need_change_without_confirmation(
    m: Manager,
) -> None:
    await behind_proxy(m)
    other = await add(m, "192.0.2.0/24", **PROXY)
    path = f"/api/v1/allowlist/entries/{other['id']}"
    assert (await m.call("POST", f"{path}/disable", {}, **PROXY))[1]["enabled"] is False
    assert (await m.call("POST", f"{path}/enable", {}, **PROXY))[1]["enabled"] is True
    assert (await m.call("DELETE", path, **PROXY))[0] == 200


async def test_dropping_the_proxy_the_caller_comes_through_needs_confirmation(
    m: Manager,
) -> None:
    await behind_proxy(m)
    status, body = await m.call(
        "PUT", "/api/v1/allowlist/trusted-proxies", {"proxies": []}, **PROXY
    )
    assert (status, body["error"]["code"]) == (409, "would_lock_out")
    assert (await m.store.access_settings()).trusted_proxies == ("127.0.0.1/32",)


async def test_disabling_the_allowlist_never_needs_confirmation(m: Manager) -> None:
    await behind_proxy(m)
    status, view = await m.call("POST", "/api/v1/allowlist/disable", {}, **PROXY)
    assert (status, view["enabled"]) == (200, False)
    assert (await m.call("GET", "/api/v1/tasks"))[0] == 200


async def test_a_running_manager_lets_everyone_in_soon_after_a_host_side_disable(
    m: Manager,
) -> None:
    await add(m, "203.0.113.0/24")
    await m.call("POST", "/api/v1/allowlist/enable", {"confirm": True})
    assert (await m.call("GET", "/api/v1/tasks"))[0] == 403
    await m.store.update_access_settings(m.clock(), allowlist_enabled=False)  # as the host does
    m.clock.advance(2.0)
    assert (await m.call("GET", "/api/v1/tasks"))[0] == 200


# -- the way back on the manager host --------------------------------------------------------


def tether_manager(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "tether-manager"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def locked_out(s: Store) -> None:
    await s.add_allowlist_entry(AllowlistEntry("ipa_1", "203.0.113.0/24", "office", True, 1.0))
    await s.update_access_settings(1.0, allowlist_enabled=True)


async def test_host_side_disable_lets_everyone_back_in(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.open()
    await locked_out(s)
    await s.close()
    done = tether_manager("allowlist", "disable", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Disabled the IP allowlist" in done.stdout
    s = open_store(tmp_path)
    await s.open()
    try:
        assert not (await s.access_settings()).allowlist_enabled
        assert [e.cidr for e in await s.list_allowlist()] == ["203.0.113.0/24"]  # kept
    finally:
        await s.close()


async def test_host_side_disable_works_on_postgresql(pg: StoreMaker) -> None:
    s = pg.postgres()
    await s.open()
    await locked_out(s)
    await s.close()
    url = f"{PG_URL}?search_path={pg.schema}"
    done = tether_manager("allowlist", "disable", "--database", url, "--data-dir", str(pg.path))
    assert done.returncode == 0, done.stderr
    s = pg.postgres()
    await s.open()
    try:
        assert not (await s.access_settings()).allowlist_enabled
    finally:
        await s.close()


def test_host_side_disable_refuses_a_dir_without_manager_data(tmp_path: Path) -> None:
    done = tether_manager("allowlist", "disable", "--data-dir", str(tmp_path / "none"))
    assert done.returncode == 2
    assert "no manager data" in done.stderr


# -- the CLI ---------------------------------------------------------------------------------


ENTRY = AllowlistEntryView(
    id="ipa_1", cidr="203.0.113.0/24", description="office", enabled=True, created_at=1.0
)


class FakeAllowlist(TetherClient):
    def __init__(self, refuse: ApiError | None = None) -> None:
        super().__init__("http://127.0.0.1:1", api_key="unused")
        self.calls: list[tuple[str, Any]] = []
        self.refuse = refuse

    def _view(self, enabled: bool) -> AllowlistView:
        return AllowlistView(
            enabled=enabled, entries=[ENTRY], trusted_proxies=["10.0.0.0/8"], your_ip="203.0.113.9"
        )

    async def get_allowlist(self) -> AllowlistView:
        return self._view(True)

    async def add_allowlist_entry(self, body: AllowlistEntryCreate) -> AllowlistEntryView:
        self.calls.append(("add", body))
        return ENTRY

    async def remove_allowlist_entry(
        self, entry_id: str, *, confirm: bool = False
    ) -> AllowlistEntryView:
        self.calls.append(("remove", (entry_id, confirm)))
        return ENTRY

    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool, *, confirm: bool = False
    ) -> AllowlistEntryView:
        self.calls.append(("entry", (entry_id, enabled, confirm)))
        return ENTRY.model_copy(update={"enabled": enabled})

    async def enable_allowlist(self, *, confirm: bool = False) -> AllowlistView:
        self.calls.append(("enable", confirm))
        if self.refuse is not None and not confirm:
            raise self.refuse
        return self._view(True)

    async def disable_allowlist(self) -> AllowlistView:
        self.calls.append(("disable", None))
        return self._view(False)

    async def get_trusted_proxies(self) -> list[str]:
        return ["10.0.0.0/8"]

    async def set_trusted_proxies(self, proxies: list[str], *, confirm: bool = False) -> list[str]:
        self.calls.append(("proxies", (proxies, confirm)))
        return proxies


def tether(client: FakeAllowlist, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def factory(_config: Config) -> TetherClient:
        return client

    code = run_cli(argv, env={"TETHER_API_KEY": "k"}, out=out, err=err, client_factory=factory)
    return code, out.getvalue(), err.getvalue()


def test_cli_add_sends_the_normalised_range_and_its_description() -> None:
    client = FakeAllowlist()
    code, out, _ = tether(client, "allowlist", "add", "2001:DB8::/32", "--description", "v6")
    assert code == 0
    ((what, body),) = client.calls
    assert what == "add"
    assert (body.cidr, body.description, body.enabled) == ("2001:db8::/32", "v6", True)
    assert out.startswith("added 203.0.113.0/24")


def test_cli_add_refuses_host_bits_before_calling_the_manager() -> None:
    client = FakeAllowlist()
    code, _, err = tether(client, "allowlist", "add", "10.0.0.1/8")
    assert code == 2
    assert "did you mean 10.0.0.0/8" in err
    assert client.calls == []


def test_cli_list_shows_the_state_and_your_address() -> None:
    code, out, _ = tether(FakeAllowlist(), "allowlist", "list")
    assert code == 0
    assert out.splitlines()[0] == (
        "IP allowlist: ENABLED (your address as the manager sees it: 203.0.113.9)"
    )
    assert "ipa_1" in out
    assert out.splitlines()[-1] == "trusted proxies: 10.0.0.0/8"


def test_cli_list_as_json_keeps_the_api_shape() -> None:
    code, out, _ = tether(FakeAllowlist(), "allowlist", "list", "--output", "json")
    assert (code, json.loads(out)["your_ip"]) == (0, "203.0.113.9")


def test_cli_enable_without_confirm_reports_the_refusal() -> None:
    refusal = ApiError(409, "would_lock_out", "this change would refuse 127.0.0.1 itself")
    client = FakeAllowlist(refuse=refusal)
    code, _, err = tether(client, "allowlist", "enable")
    assert code == 1
    assert "would_lock_out" in err
    code, _, _ = tether(client, "allowlist", "enable", "--confirm")
    assert code == 0
    assert client.calls == [("enable", False), ("enable", True)]


def test_cli_enable_and_disable_with_an_id_switch_one_entry() -> None:
    client = FakeAllowlist()
    assert tether(client, "allowlist", "disable", "ipa_1", "--confirm")[0] == 0
    assert tether(client, "allowlist", "enable", "ipa_1")[0] == 0
    assert tether(client, "allowlist", "disable")[0] == 0
    assert client.calls == [
        ("entry", ("ipa_1", False, True)),
        ("entry", ("ipa_1", True, False)),
        ("disable", None),
    ]


def test_cli_remove_passes_confirm() -> None:
    client = FakeAllowlist()
    assert tether(client, "allowlist", "remove", "ipa_1", "--confirm")[0] == 0
    assert client.calls == [("remove", ("ipa_1", True))]


def test_cli_trusted_proxies_show_set_and_clear() -> None:
    client = FakeAllowlist()
    assert tether(client, "allowlist", "trusted-proxies")[1] == "10.0.0.0/8\n"
    code, out, _ = tether(client, "allowlist", "trusted-proxies", "--set", "10.1.0.0/16")
    assert (code, out) == (0, "10.1.0.0/16\n")
    code, _, err = tether(client, "allowlist", "trusted-proxies", "--clear", "--confirm")
    assert (code, err) == (0, "no trusted proxies: X-Forwarded-For is ignored\n")
    assert client.calls == [("proxies", (["10.1.0.0/16"], False)), ("proxies", ([], True))]
