"""API keys, their account defaults, and the IP allowlist under /api/v1.

A key is in the answer that creates it and nowhere else, ever: listings show its prefix.
An allowlist change that would refuse the caller's own address is refused with 409 unless
the request confirms it (``confirm: true``; ``tether ... --confirm``): the way back from a
lock-out is on the manager host (``tether-manager allowlist disable``).
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from manager.access.granting import check_grantable
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction, unchanged
from manager.api.context import ctx
from manager.api.guards import ACCESS, API_KEY, caller_address, key_status
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.core.allowlist import Snapshot
from manager.core.audit_chain import AuditOf
from manager.records import AccessSettings, AllowlistEntry, ApiKeyRecord
from manager.schemas.access import (
    AllowlistEntryCreate,
    AllowlistEntryView,
    AllowlistView,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyDefaults,
    ApiKeyDefaultsUpdate,
    ApiKeyList,
    ApiKeyView,
    Confirm,
    TrustedProxies,
    TrustedProxiesPut,
    parse_cidr,
)
from shared.ids import new_id

__all__ = ["add_access_routes"]

_DAY = 86400.0


# -- API keys ------------------------------------------------------------------------------


def _key_view(r: ApiKeyRecord, now: float) -> ApiKeyView:
    return ApiKeyView(
        id=r.id,
        name=r.name,
        prefix=r.prefix,
        owner=r.owner,
        owner_user_id=r.owner_user_id,
        service_account=r.service_account,
        groups=list(r.groups),
        max_qps=r.max_qps,
        burst=r.burst,
        created_at=r.created_at,
        expires_at=r.expires_at,
        last_used_at=r.last_used_at,
        revoked_at=r.revoked_at,
        status=key_status(r, now),
        created_by=r.created_by,
    )


def _key_audit(view: ApiKeyView) -> dict[str, object]:
    # The settings that matter to who may do what; never the key, which no view holds.
    return view.model_dump(mode="json", exclude={"last_used_at", "status"})


async def create_api_key_route(request: web.Request) -> web.Response:
    body = await parse_body(request, ApiKeyCreate)
    c = ctx(request)
    now = c.clock()
    principal = principal_of(request)
    creator = request.get(API_KEY)
    groups = await _grantable_groups(request, body.groups)
    # A key acts for its owner: a service account's key for the account itself (through the
    # groups it names), anyone else's for the user the caller acts for.
    owner_user_id = None if body.service_account else principal.user_id
    own_name = principal.actor.name if principal.user_id else (creator.owner if creator else "")
    if not body.service_account and body.owner is not None and body.owner != own_name:
        # A personal key acts for its creator: naming someone else would mislabel it.
        raise ApiProblem(
            400,
            "invalid",
            "owner: a personal API key is owned by whoever creates it; leave owner out",
            field="owner",
        )
    owner = body.owner or (body.name if body.service_account else own_name)
    if not body.service_account and principal.user_id is None and not groups and creator:
        # A key made by a service account's key acts as that key did, no more.
        groups = list(creator.groups)
    created, key = await c.api_keys.create(
        body.name,
        owner=owner,
        owner_user_id=owner_user_id,
        service_account=body.service_account,
        groups=groups,
        max_qps=body.max_qps,
        burst=body.burst,
        expires_at=None if body.expires_in_days is None else now + body.expires_in_days * _DAY,
        now=now,
        created_by=principal.actor.id,
        audit=in_transaction(
            request,
            lambda k: Change(
                k.id,
                k.name,
                "create",
                f"created API key {k.name} ({k.prefix}..., max QPS {k.max_qps})",
                after=_key_audit(_key_view(k, now)),
            ),
        ),
    )
    view = _key_view(created, now)
    return json_response(ApiKeyCreated(**view.model_dump(), key=key), status=201)


async def _grantable_groups(request: web.Request, names: list[str]) -> list[str]:
    """``names`` if they exist and the caller may hand them out: anyone who may edit groups
    could give themselves any group anyway; everyone else only the groups they act through."""
    principal = principal_of(request)
    directory = request.app[ACCESS].directory
    known = {g.body.name: g for g in await directory.groups.list()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ApiProblem(400, "invalid", f"no user group {unknown[0]!r}", field="groups")
    # No key carries more than its creator holds (manager.access.granting) ...
    await check_grantable(request, directory, [known[n] for n in names])
    if principal.grants.has("manage_user_groups"):
        return names
    # ... and without manage_user_groups, only groups the creator acts through.
    own = await _own_group_names(request)
    beyond = [n for n in names if n not in own]
    if beyond:
        raise ApiProblem(
            403, "forbidden", f"a key may only carry groups you are in; not {beyond[0]!r}"
        )
    return names


async def _own_group_names(request: web.Request) -> set[str]:
    principal = principal_of(request)
    directory = request.app[ACCESS].directory
    if principal.user_id is not None:
        user = await directory.users.get(principal.user_id)
        return set() if user is None else {g.body.name for g in await directory.user_groups(user)}
    creator = request.get(API_KEY)
    return set(creator.groups) if creator is not None else set()


async def list_api_keys(request: web.Request) -> web.Response:
    c = ctx(request)
    now = c.clock()
    keys = await c.api_keys.list()
    return json_response(ApiKeyList(api_keys=[_key_view(k, now) for k in keys]))


async def revoke_api_key(request: web.Request) -> web.Response:
    c = ctx(request)
    name = request.match_info["name"]
    now = c.clock()

    def revoked_change(k: ApiKeyRecord) -> Change:
        view = _key_view(k, now)
        return Change(
            k.id,
            k.name,
            "revoke",
            f"revoked API key {k.name} ({k.prefix}...)",
            before=_key_audit(view.model_copy(update={"revoked_at": None, "status": "active"})),
            after=_key_audit(view),
        )

    revoked = await c.api_keys.revoke(name, now, audit=in_transaction(request, revoked_change))
    # This replica at once; the others within their key cache's lifetime (1 s).
    request.app[ACCESS].key_revoked(revoked.id)
    return json_response(_key_view(revoked, now))


def _defaults(s: AccessSettings) -> ApiKeyDefaults:
    return ApiKeyDefaults(max_qps=s.api_key_max_qps, burst=s.api_key_burst)


async def get_api_key_defaults(request: web.Request) -> web.Response:
    return json_response(_defaults(await ctx(request).api_keys.defaults()))


async def put_api_key_defaults(request: web.Request) -> web.Response:
    body = await parse_body(request, ApiKeyDefaultsUpdate)
    c = ctx(request)
    before = _defaults(await c.api_keys.defaults())

    def updated(settings: AccessSettings) -> Change:
        after = _defaults(settings)
        return Change(
            "api_key_defaults",
            "api_key_defaults",
            "update",
            f"new API keys get max QPS {after.max_qps}, burst {after.burst}",
            before=before.model_dump(),
            after=after.model_dump(),
        )

    settings = await c.api_keys.set_defaults(
        body.max_qps, body.burst, audit=in_transaction(request, updated)
    )
    return json_response(_defaults(settings))


# -- the IP allowlist ----------------------------------------------------------------------


def _entry_view(e: AllowlistEntry) -> AllowlistEntryView:
    return AllowlistEntryView(
        id=e.id, cidr=e.cidr, description=e.description, enabled=e.enabled, created_at=e.created_at
    )


def _allowlist_view(
    request: web.Request, s: AccessSettings, entries: list[AllowlistEntry]
) -> AllowlistView:
    addr = caller_address(request, Snapshot.of(s, entries))
    return AllowlistView(
        enabled=s.allowlist_enabled,
        entries=[_entry_view(e) for e in entries],
        trusted_proxies=list(s.trusted_proxies),
        your_ip=None if addr is None else str(addr),
    )


def _settings_audit(s: AccessSettings) -> dict[str, object]:
    return {"enabled": s.allowlist_enabled, "trusted_proxies": list(s.trusted_proxies)}


def _settings_change(
    request: web.Request, what: str, action: str, summary: str, before: AccessSettings
) -> AuditOf[AccessSettings]:
    """The event of a change to the allowlist's settings, from the settings as written."""
    return in_transaction(
        request,
        lambda after: Change(
            what,
            what,
            action,
            summary,
            before=_settings_audit(before),
            after=_settings_audit(after),
        ),
    )


def _refuse_lock_out(
    request: web.Request, settings: AccessSettings, entries: list[AllowlistEntry], confirm: bool
) -> None:
    """409 when the allowlist as it would be after the change refuses this very caller."""
    if confirm:
        return
    after = Snapshot.of(settings, entries)
    addr = caller_address(request, after)
    if after.allows(addr):
        return
    who = str(addr) if addr is not None else "your address (it could not be told)"
    raise ApiProblem(
        409,
        "would_lock_out",
        f"this change would refuse {who} itself: add an entry that covers it first, or send "
        '"confirm": true (tether: --confirm) to go ahead. Recovery on the manager host: '
        "tether-manager allowlist disable",
    )


async def _confirm(request: web.Request) -> bool:
    """The optional ``{"confirm": true}`` body; none at all means false."""
    if not request.body_exists:
        return False
    return (await parse_body(request, Confirm)).confirm


async def _current(request: web.Request) -> tuple[AccessSettings, list[AllowlistEntry]]:
    return await ctx(request).allowlist.current()


def _changed(request: web.Request) -> None:
    request.app[ACCESS].allowlist.invalidate()


async def get_allowlist(request: web.Request) -> web.Response:
    settings, entries = await _current(request)
    return json_response(_allowlist_view(request, settings, entries))


async def enable_allowlist(request: web.Request) -> web.Response:
    confirm = await _confirm(request)
    settings, entries = await _current(request)
    if settings.allowlist_enabled:
        unchanged(request)
        return json_response(_allowlist_view(request, settings, entries))
    _refuse_lock_out(request, replace(settings, allowlist_enabled=True), entries, confirm)
    enabled = sum(e.enabled for e in entries)
    after = await ctx(request).allowlist.set_enabled(
        True,
        audit=_settings_change(
            request,
            "allowlist",
            "enable",
            f"enabled the IP allowlist ({enabled} enabled entries)",
            settings,
        ),
    )
    _changed(request)
    return json_response(_allowlist_view(request, after, entries))


async def disable_allowlist(request: web.Request) -> web.Response:
    await _confirm(request)  # accepted, and not needed: turning it off refuses nobody
    settings, entries = await _current(request)
    if not settings.allowlist_enabled:
        unchanged(request)
        return json_response(_allowlist_view(request, settings, entries))
    after = await ctx(request).allowlist.set_enabled(
        False,
        audit=_settings_change(
            request, "allowlist", "disable", "disabled the IP allowlist", settings
        ),
    )
    _changed(request)
    return json_response(_allowlist_view(request, after, entries))


async def add_allowlist_entry(request: web.Request) -> web.Response:
    body = await parse_body(request, AllowlistEntryCreate)
    try:
        network = parse_cidr(body.cidr)
    except ValueError as exc:
        raise ApiProblem(400, "invalid", str(exc), field="cidr") from None
    c = ctx(request)
    entry = AllowlistEntry(
        id=new_id("ipa"),
        cidr=str(network),
        description=body.description,
        enabled=body.enabled,
        created_at=c.clock(),
    )
    await c.allowlist.add(
        entry,
        audit=in_transaction(
            request,
            lambda e: Change(
                e.id,
                e.cidr,
                "create",
                f"allowed {e.cidr}" + ("" if e.enabled else " (disabled)"),
                after=_entry_view(e).model_dump(),
            ),
        ),
    )
    _changed(request)
    return json_response(_entry_view(entry), status=201)


async def _entry(
    request: web.Request, entry_id: str
) -> tuple[AllowlistEntry, AccessSettings, list[AllowlistEntry]]:
    settings, entries = await _current(request)
    entry = next((e for e in entries if e.id == entry_id), None)
    if entry is None:
        raise ApiProblem(404, "not_found", f"no allowlist entry {entry_id!r}")
    return entry, settings, entries


async def remove_allowlist_entry(request: web.Request) -> web.Response:
    entry_id = request.match_info["entry_id"]
    confirm = request.query.get("confirm", "").lower() in ("1", "true", "yes")
    _, settings, entries = await _entry(request, entry_id)
    _refuse_lock_out(request, settings, [e for e in entries if e.id != entry_id], confirm)
    removed = await ctx(request).allowlist.remove(
        entry_id,
        audit=in_transaction(
            request,
            lambda e: Change(
                e.id,
                e.cidr,
                "delete",
                f"removed {e.cidr} from the IP allowlist",
                before=_entry_view(e).model_dump(),
            ),
        ),
    )
    _changed(request)
    return json_response(_entry_view(removed))


async def _set_entry(request: web.Request, enabled: bool) -> web.Response:
    entry_id = request.match_info["entry_id"]
    confirm = await _confirm(request)
    entry, settings, entries = await _entry(request, entry_id)
    if entry.enabled == enabled:
        unchanged(request)
        return json_response(_entry_view(entry))
    if not enabled:  # enabling one only lets more addresses in
        rest = [replace(e, enabled=False) if e.id == entry_id else e for e in entries]
        _refuse_lock_out(request, settings, rest, confirm)
    updated = await ctx(request).allowlist.set_entry_enabled(
        entry_id,
        enabled,
        audit=in_transaction(
            request,
            lambda e: Change(
                e.id,
                e.cidr,
                "enable" if enabled else "disable",
                f"{'enabled' if enabled else 'disabled'} allowlist entry {e.cidr}",
                before=_entry_view(entry).model_dump(),
                after=_entry_view(e).model_dump(),
            ),
        ),
    )
    _changed(request)
    return json_response(_entry_view(updated))


async def enable_allowlist_entry(request: web.Request) -> web.Response:
    return await _set_entry(request, True)


async def disable_allowlist_entry(request: web.Request) -> web.Response:
    return await _set_entry(request, False)


async def get_trusted_proxies(request: web.Request) -> web.Response:
    settings = await ctx(request).allowlist.settings()
    return json_response(TrustedProxies(proxies=list(settings.trusted_proxies)))


async def put_trusted_proxies(request: web.Request) -> web.Response:
    body = await parse_body(request, TrustedProxiesPut)
    proxies: list[str] = []
    for i, text in enumerate(body.proxies):
        try:
            network = str(parse_cidr(text))
        except ValueError as exc:
            raise ApiProblem(400, "invalid", str(exc), field=f"proxies.{i}") from None
        if network not in proxies:
            proxies.append(network)
    settings, entries = await _current(request)
    # Who the caller is depends on the proxies believed: the change can lock it out too.
    _refuse_lock_out(
        request, replace(settings, trusted_proxies=tuple(proxies)), entries, body.confirm
    )
    after = await ctx(request).allowlist.set_trusted_proxies(
        proxies,
        audit=_settings_change(
            request,
            "trusted_proxies",
            "update",
            f"trusted proxies: {', '.join(proxies) or 'none'}",
            settings,
        ),
    )
    _changed(request)
    return json_response(TrustedProxies(proxies=list(after.trusted_proxies)))


def add_access_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    keys = "/api/v1/api-keys"
    al = "/api/v1/allowlist"
    for route in (
        Route(
            "POST",
            keys,
            create_api_key_route,
            "Create an API key (shown once)",
            u,
            ApiKeyCreate,
            ApiKeyCreated,
            201,
            errors=(400, 409),
            audit="api_key",
        ),
        Route("GET", keys, list_api_keys, "List API keys (never a key)", u, None, ApiKeyList),
        Route(
            "DELETE",
            f"{keys}/{{name}}",
            revoke_api_key,
            "Revoke an API key",
            u,
            None,
            ApiKeyView,
            errors=(404,),
            audit="api_key",
        ),
        Route(
            "GET",
            "/api/v1/api-key-defaults",
            get_api_key_defaults,
            "The limits a new API key gets by default",
            u,
            None,
            ApiKeyDefaults,
        ),
        Route(
            "PUT",
            "/api/v1/api-key-defaults",
            put_api_key_defaults,
            "Change the limits new API keys get by default",
            u,
            ApiKeyDefaultsUpdate,
            ApiKeyDefaults,
            errors=(400,),
            audit="api_key_defaults",
        ),
        Route("GET", al, get_allowlist, "The IP allowlist", u, None, AllowlistView),
        Route(
            "POST",
            f"{al}/enable",
            enable_allowlist,
            "Turn the IP allowlist on",
            u,
            Confirm,
            AllowlistView,
            errors=(400, 409),
            audit="allowlist",
        ),
        Route(
            "POST",
            f"{al}/disable",
            disable_allowlist,
            "Turn the IP allowlist off",
            u,
            Confirm,
            AllowlistView,
            errors=(400,),
            audit="allowlist",
        ),
        Route(
            "POST",
            f"{al}/entries",
            add_allowlist_entry,
            "Allow a CIDR range",
            u,
            AllowlistEntryCreate,
            AllowlistEntryView,
            201,
            errors=(400, 409),
            audit="allowlist_entry",
        ),
        Route(
            "DELETE",
            f"{al}/entries/{{entry_id}}",
            remove_allowlist_entry,
            "Remove an allowlist entry",
            u,
            None,
            AllowlistEntryView,
            query={"confirm": "boolean"},
            errors=(404, 409),
            audit="allowlist_entry",
        ),
        Route(
            "POST",
            f"{al}/entries/{{entry_id}}/enable",
            enable_allowlist_entry,
            "Enable an allowlist entry",
            u,
            Confirm,
            AllowlistEntryView,
            errors=(400, 404),
            audit="allowlist_entry",
        ),
        Route(
            "POST",
            f"{al}/entries/{{entry_id}}/disable",
            disable_allowlist_entry,
            "Disable an allowlist entry",
            u,
            Confirm,
            AllowlistEntryView,
            errors=(400, 404, 409),
            audit="allowlist_entry",
        ),
        Route(
            "GET",
            f"{al}/trusted-proxies",
            get_trusted_proxies,
            "Proxies whose X-Forwarded-For is believed",
            u,
            None,
            TrustedProxies,
        ),
        Route(
            "PUT",
            f"{al}/trusted-proxies",
            put_trusted_proxies,
            "Set the proxies whose X-Forwarded-For is believed",
            u,
            TrustedProxiesPut,
            TrustedProxies,
            errors=(400, 409),
            audit="trusted_proxies",
        ),
    ):
        table.add(route)
