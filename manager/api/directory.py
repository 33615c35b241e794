"""Users, user groups, applications and environments under /api/v1.

Names in, names out; ids in the store (manager.access.directory). Every change records one audit
event, and drops this replica's cached permissions at once (the others re-read within 1 s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web

from manager.access.directory import (
    ADMIN_GROUP_ID,
    AppBody,
    Directory,
    EnvBody,
    GroupBody,
    UserBody,
)
from manager.access.entities import Entity, Gone
from manager.access.granting import check_grantable, check_group_edit
from manager.access.login import LOGINS
from manager.api.audit_record import Change, in_transaction
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.schemas.directory import (
    AppCreate,
    AppList,
    AppPermission,
    AppView,
    EnvCreate,
    EnvList,
    EnvUpdate,
    EnvView,
    GroupCreate,
    GroupList,
    GroupUpdate,
    GroupView,
    UserCreate,
    UserCreated,
    UserList,
    UserUpdate,
    UserView,
)
from manager.schemas.grants import AppGrant
from manager.store.base import Conflict
from shared.ids import hash_secret, new_token

__all__ = ["INVITE_TTL_S", "add_directory_routes"]

# An invite is good for a week.
INVITE_TTL_S = 7 * 24 * 3600.0


def _dir(request: web.Request) -> Directory:
    return request.app[ACCESS].directory


def _changed(request: web.Request) -> None:
    """Permissions may have changed: this replica re-reads them at the next request."""
    request.app[ACCESS].principals.forget()


async def _group_ids(d: Directory, names: list[str]) -> list[str]:
    by_name = {g.body.name: g.id for g in await d.groups.list()}
    for name in names:
        if name not in by_name:
            raise ApiProblem(400, "invalid", f"no user group {name!r}", field="groups")
    return [by_name[n] for n in dict.fromkeys(names)]


# -- users ---------------------------------------------------------------------------------


async def _user_view(d: Directory, u: Entity[UserBody]) -> UserView:
    return _user_view_of(await _group_names(d), u)


async def _group_names(d: Directory) -> dict[str, str]:
    return {g.id: g.body.name for g in await d.groups.list()}


def _user_view_of(names: dict[str, str], u: Entity[UserBody]) -> UserView:
    """A user's view, of group names read before: made in the write's transaction."""
    b = u.body
    return UserView(
        id=u.id,
        email=b.email,
        name=b.name,
        status=b.status,
        source=b.source,
        groups=[names.get(g, g) for g in b.groups],
        totp_enabled=b.totp_enabled,
        created_at=u.created_at,
        last_login_at=b.last_login_at,
        locked_until=b.locked_until,
        invite_expires_at=b.invite_expires_at if b.status == "invited" else None,
    )


def _user_audit(view: UserView) -> dict[str, object]:
    # The view holds no password hash, TOTP secret, recovery code or invite.
    return view.model_dump(mode="json", exclude={"last_login_at", "locked_until"})


async def _find_user(request: web.Request) -> Entity[UserBody]:
    d, key = _dir(request), request.match_info["user"]
    found = await d.users.get(key) or await d.users.by_key(key.lower())
    if found is None:
        raise ApiProblem(404, "not_found", f"no user {key!r}")
    return found


def _invite(request: web.Request) -> tuple[str, str, float]:
    token = new_token("tiv")
    return token, hash_secret(token), ctx(request).clock() + INVITE_TTL_S


async def create_user(request: web.Request) -> web.Response:
    body = await parse_body(request, UserCreate)
    d = _dir(request)
    groups = await _group_ids(d, body.groups)
    await check_grantable(request, d, [g for g in await d.groups.list() if g.id in groups])
    token, token_hash, expires = _invite(request)
    email = body.email.lower()
    settings = await request.app[LOGINS].settings()
    if not settings.domain_allowed(email):
        allowed = ", ".join(settings.allowed_email_domains)
        raise ApiProblem(
            400, "invalid", f"email: only these domains may join: {allowed}", field="email"
        )
    names = await _group_names(d)

    def made(user: Entity[UserBody]) -> Change:
        after = _user_audit(_user_view_of(names, user))
        return Change(user.id, email, "create", f"invited user {email}", after=after)

    try:
        user = await d.users.insert(
            UserBody(
                email=email,
                name=body.name,
                status="invited",
                groups=groups,
                invite_hash=token_hash,
                invite_expires_at=expires,
            ),
            audit=in_transaction(request, made),
        )
    except Conflict:
        raise ApiProblem(409, "conflict", f"a user {email!r} exists", field="email") from None
    view = _user_view_of(names, user)
    return json_response(UserCreated(**view.model_dump(), invite_token=token), status=201)


async def list_users(request: web.Request) -> web.Response:
    d = _dir(request)
    users = await d.users.list()
    if group := request.query.get("group"):
        wanted = (await _group_ids(d, [group]))[0]
        users = [u for u in users if wanted in u.body.groups]
    return json_response(UserList(users=[await _user_view(d, u) for u in users]))


async def get_user(request: web.Request) -> web.Response:
    return json_response(await _user_view(_dir(request), await _find_user(request)))


async def update_user(request: web.Request) -> web.Response:
    body = await parse_body(request, UserUpdate)
    d, user = _dir(request), await _find_user(request)
    groups = None if body.groups is None else await _group_ids(d, body.groups)
    if groups is not None:
        # Only what is added is judged: taking a group away never raises anyone.
        added = set(groups) - set(user.body.groups)
        await check_grantable(request, d, [g for g in await d.groups.list() if g.id in added])

    def change(b: UserBody) -> UserBody:
        update: dict[str, object] = {}
        if body.name is not None:
            update["name"] = body.name
        if groups is not None:
            update["groups"] = groups
        return b.model_copy(update=update)

    return await _user_change(request, user, change, "update", "changed user")


async def _user_change(
    request: web.Request,
    user: Entity[UserBody],
    change: Callable[[UserBody], UserBody],
    action: str,
    what: str,
    *,
    end_sessions: bool = False,
) -> web.Response:
    """``change`` to the user with its event (``end_sessions``: and the end of their
    sessions), in one transaction."""
    d = _dir(request)
    names = await _group_names(d)

    def changed(written: tuple[UserBody, Entity[UserBody]]) -> Change:
        before, after = written
        return Change(
            user.id,
            user.body.email,
            action,
            f"{what} {user.body.email}",
            before=_user_audit(_user_view_of(names, dataclasses.replace(after, body=before))),
            after=_user_audit(_user_view_of(names, after)),
        )

    audit = in_transaction(request, changed)
    try:
        if end_sessions:
            after_entity = await request.app[LOGINS].change_ending_sessions(
                user.id, change, audit=audit
            )
        else:
            _, after_entity = await d.users.update(user.id, change, audit=audit)
    except Gone:
        raise ApiProblem(404, "not_found", f"no user {user.body.email!r}") from None
    _changed(request)
    return json_response(_user_view_of(names, after_entity))


async def disable_user(request: web.Request) -> web.Response:
    user = await _find_user(request)
    # Their sessions end with it (their API keys stop with them: manager.access.principal).
    return await _user_change(
        request,
        user,
        # An invite outstanding dies with it: enabling the user later needs a fresh one.
        lambda b: b.model_copy(
            update={"status": "disabled", "invite_hash": None, "invite_expires_at": None}
        ),
        "disable",
        "disabled user",
        end_sessions=True,
    )


async def enable_user(request: web.Request) -> web.Response:
    user = await _find_user(request)
    if user.body.status != "disabled":
        raise ApiProblem(409, "conflict", f"user {user.body.email!r} is not disabled")

    def enable(b: UserBody) -> UserBody:
        # One who never accepted their invite is invited again, not active without a password.
        ready = b.password_hash is not None or b.source == "sso"
        return b.model_copy(update={"status": "active" if ready else "invited"})

    # A login that raced the disable may have left a session behind: it does not come back.
    return await _user_change(request, user, enable, "enable", "enabled user", end_sessions=True)


async def unlock_user(request: web.Request) -> web.Response:
    user = await _find_user(request)
    now = ctx(request).clock()
    locks = [user.body.locked_until] + [n.locked_until for n in user.body.network_failures.values()]
    if not any((until or 0) > now for until in locks):
        raise ApiProblem(409, "conflict", f"user {user.body.email!r} is not locked")

    def unlock(b: UserBody) -> UserBody:
        # Everywhere and from every network (manager.access.lockout).
        update: dict[str, object] = {
            "locked_until": None,
            "failed_logins": 0,
            "network_failures": {},
        }
        return b.model_copy(update=update)

    return await _user_change(request, user, unlock, "unlock", "unlocked user")


async def reset_totp(request: web.Request) -> web.Response:
    """For a user who lost their device and their recovery codes: they enrol again (at their
    next login, where the account enforces 2FA)."""
    user = await _find_user(request)
    if not user.body.totp_enabled:
        raise ApiProblem(409, "conflict", f"user {user.body.email!r} has no 2FA to reset")

    def reset(b: UserBody) -> UserBody:
        update: dict[str, object] = {
            "totp_enabled": False,
            "totp_sealed": None,
            "totp_pending_sealed": None,
            "recovery_hashes": [],
        }
        return b.model_copy(update=update)

    return await _user_change(
        request, user, reset, "reset_2fa", "turned off 2FA of", end_sessions=True
    )


async def end_user_sessions(request: web.Request) -> web.Response:
    user = await _find_user(request)
    email = user.body.email

    def ended(count: int) -> Change:
        return Change(user.id, email, "logout", f"ended {count} session(s) of {email}")

    await request.app[LOGINS].end_sessions(user.id, audit=in_transaction(request, ended))
    return json_response(await _user_view(_dir(request), user))


async def reinvite_user(request: web.Request) -> web.Response:
    d, user = _dir(request), await _find_user(request)
    if user.body.status != "invited":
        raise ApiProblem(409, "conflict", f"user {user.body.email!r} has accepted their invite")
    token, token_hash, expires = _invite(request)

    def fresh(b: UserBody) -> UserBody:
        return b.model_copy(update={"invite_hash": token_hash, "invite_expires_at": expires})

    email = user.body.email
    summary = f"sent user {email} a new invite (the old one no longer works)"
    audit = in_transaction(request, lambda _: Change(user.id, email, "invite", summary))
    try:
        _, after = await d.users.update(user.id, fresh, audit=audit)
    except Gone:
        raise ApiProblem(404, "not_found", f"no user {email!r}") from None
    view = await _user_view(d, after)
    return json_response(UserCreated(**view.model_dump(), invite_token=token))


# -- groups --------------------------------------------------------------------------------


async def _places(d: Directory) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    apps = {a.id: a.body.name for a in await d.apps.list()}
    envs = {e.id: (e.body.app_id, e.body.name) for e in await d.envs.list()}
    return apps, envs


async def _grants(d: Directory, perms: list[AppPermission]) -> list[AppGrant]:
    """Names to ids; 400 naming what does not exist."""
    apps, envs = await _places(d)
    app_ids = {n: i for i, n in apps.items()}
    out: list[AppGrant] = []
    for n, p in enumerate(perms):
        chosen: list[str] = []
        if p.apps != "all":
            for name in p.apps:
                if name not in app_ids:
                    field = f"app_permissions.{n}.apps"
                    raise ApiProblem(400, "invalid", f"no application {name!r}", field=field)
                chosen.append(app_ids[name])
        env_choice: str | tuple[str, ...] = p.envs if isinstance(p.envs, str) else ()
        if isinstance(p.envs, list):
            within = set(chosen) if chosen else set(apps)
            ids = []
            for name in p.envs:
                found = [i for i, (a, en) in envs.items() if en == name and a in within]
                if not found:
                    field = f"app_permissions.{n}.envs"
                    msg = f"no environment {name!r} in the listed applications"
                    raise ApiProblem(400, "invalid", msg, field=field)
                ids.extend(found)
            env_choice = tuple(ids)
        out.append(
            AppGrant.model_validate(
                {
                    "apps": "all" if p.apps == "all" else tuple(chosen),
                    "envs": env_choice,
                    "actions": tuple(p.actions),
                }
            )
        )
    return out


async def _group_view(d: Directory, g: Entity[GroupBody]) -> GroupView:
    places = await _places(d)
    members = [u.body.email for u in await d.users.list() if g.id in u.body.groups]
    return _group_view_of(places, members, g)


def _group_view_of(
    places: tuple[dict[str, str], dict[str, tuple[str, str]]],
    members: list[str],
    g: Entity[GroupBody],
) -> GroupView:
    """A group's view, of places and members read before: made in the write's transaction."""
    apps, envs = places
    perms = [
        AppPermission(
            apps="all" if x.apps == "all" else [apps.get(a, a) for a in x.apps],
            envs=x.envs if isinstance(x.envs, str) else [envs.get(e, ("", e))[1] for e in x.envs],
            actions=list(x.actions),
        )
        for x in g.body.app_permissions
    ]
    return GroupView(
        id=g.id,
        name=g.body.name,
        description=g.body.description,
        account_permissions=list(g.body.account_permissions),
        app_permissions=perms,
        builtin=g.id == ADMIN_GROUP_ID,
        members=members,
    )


async def _find_group(request: web.Request) -> Entity[GroupBody]:
    d, key = _dir(request), request.match_info["group"]
    found = await d.groups.get(key) or await d.groups.by_key(key)
    if found is None:
        raise ApiProblem(404, "not_found", f"no user group {key!r}")
    return found


async def create_group(request: web.Request) -> web.Response:
    body = await parse_body(request, GroupCreate)
    d = _dir(request)
    grants = await _grants(d, body.app_permissions)
    made = GroupBody(
        name=body.name,
        description=body.description,
        account_permissions=list(dict.fromkeys(body.account_permissions)),
        app_permissions=grants,
    )
    await check_group_edit(request, d, made)
    places = await _places(d)

    def created(g: Entity[GroupBody]) -> Change:
        after = _group_view_of(places, [], g).model_dump(mode="json")
        return Change(g.id, g.body.name, "create", f"created user group {g.body.name}", after=after)

    try:
        group = await d.groups.insert(made, audit=in_transaction(request, created))
    except Conflict:
        raise ApiProblem(409, "conflict", f"a group {body.name!r} exists", field="name") from None
    return json_response(_group_view_of(places, [], group), status=201)


async def list_groups(request: web.Request) -> web.Response:
    d = _dir(request)
    return json_response(GroupList(groups=[await _group_view(d, g) for g in await d.groups.list()]))


async def get_group(request: web.Request) -> web.Response:
    return json_response(await _group_view(_dir(request), await _find_group(request)))


async def update_group(request: web.Request) -> web.Response:
    body = await parse_body(request, GroupUpdate)
    d, group = _dir(request), await _find_group(request)
    perms_given = body.account_permissions is not None or body.app_permissions is not None
    if group.id == ADMIN_GROUP_ID and perms_given:
        raise ApiProblem(400, "invalid", "the administrators' permissions are built in")
    grants = None if body.app_permissions is None else await _grants(d, body.app_permissions)

    def change(b: GroupBody) -> GroupBody:
        update: dict[str, object] = {}
        if body.description is not None:
            update["description"] = body.description
        if body.account_permissions is not None:
            update["account_permissions"] = list(dict.fromkeys(body.account_permissions))
        if grants is not None:
            update["app_permissions"] = grants
        return b.model_copy(update=update)

    if perms_given:
        await check_group_edit(request, d, change(group.body))
    places = await _places(d)
    members = [u.body.email for u in await d.users.list() if group.id in u.body.groups]

    def changed(written: tuple[GroupBody, Entity[GroupBody]]) -> Change:
        before, after = written
        return Change(
            group.id,
            group.body.name,
            "update",
            f"changed user group {group.body.name}",
            before=_group_view_of(
                places, members, dataclasses.replace(after, body=before)
            ).model_dump(mode="json"),
            after=_group_view_of(places, members, after).model_dump(mode="json"),
        )

    try:
        _, after_entity = await d.groups.update(
            group.id, change, audit=in_transaction(request, changed)
        )
    except Gone:
        raise ApiProblem(404, "not_found", f"no user group {group.body.name!r}") from None
    _changed(request)
    return json_response(await _group_view(d, after_entity))


async def delete_group(request: web.Request) -> web.Response:
    d, group = _dir(request), await _find_group(request)
    if group.id == ADMIN_GROUP_ID:
        raise ApiProblem(400, "invalid", "the administrators' group is built in")
    members = [u for u in await d.users.list() if group.id in u.body.groups]
    if members and request.query.get("force") != "true":
        raise ApiProblem(
            409,
            "conflict",
            f"{len(members)} user(s) are in {group.body.name!r}; pass force=true to remove them",
        )
    places = await _places(d)

    def deleted(written: tuple[Entity[GroupBody], list[str]]) -> Change:
        g, members = written
        before = _group_view_of(places, members, g).model_dump(mode="json")
        name = g.body.name
        return Change(g.id, name, "delete", f"deleted user group {name}", before=before)

    try:
        await d.delete_group(group.id, audit=in_transaction(request, deleted))
    except Gone:
        raise ApiProblem(404, "not_found", f"no user group {group.body.name!r}") from None
    _changed(request)
    return web.Response(status=204)


# -- applications and environments ---------------------------------------------------------


def _app_view(a: Entity[AppBody]) -> AppView:
    return AppView(
        id=a.id, name=a.body.name, description=a.body.description, created_at=a.created_at
    )


async def _find_app(request: web.Request) -> Entity[AppBody]:
    d, key = _dir(request), request.match_info["app"]
    found = await d.apps.get(key) or await d.apps.by_key(key)
    if found is None:
        raise ApiProblem(404, "not_found", f"no application {key!r}")
    return found


async def create_app(request: web.Request) -> web.Response:
    body = await parse_body(request, AppCreate)

    def created(a: Entity[AppBody]) -> Change:
        name, after = a.body.name, _app_view(a).model_dump(mode="json")
        return Change(a.id, name, "create", f"created application {name}", after=after, app=name)

    made = AppBody(name=body.name, description=body.description)
    try:
        app = await _dir(request).apps.insert(made, audit=in_transaction(request, created))
    except Conflict:
        raise ApiProblem(
            409, "conflict", f"an application {body.name!r} exists", field="name"
        ) from None
    return json_response(_app_view(app), status=201)


async def list_apps(request: web.Request) -> web.Response:
    return json_response(AppList(apps=[_app_view(a) for a in await _dir(request).apps.list()]))


async def delete_app(request: web.Request) -> web.Response:
    d, app = _dir(request), await _find_app(request)
    if any(e.body.app_id == app.id for e in await d.envs.list()):
        raise ApiProblem(409, "conflict", f"{app.body.name!r} has environments; delete them first")

    def deleted(a: Entity[AppBody]) -> Change:
        name, before = a.body.name, _app_view(a).model_dump(mode="json")
        return Change(a.id, name, "delete", f"deleted application {name}", before=before, app=name)

    await d.apps.delete(app.id, audit=in_transaction(request, deleted))
    return web.Response(status=204)


def _env_view(app: Entity[AppBody], e: Entity[EnvBody]) -> EnvView:
    return EnvView(
        id=e.id,
        app=app.body.name,
        name=e.body.name,
        type=e.body.type,
        created_at=e.created_at,
        dedicated_delegates=e.body.dedicated_delegates,
    )


async def create_env(request: web.Request) -> web.Response:
    body = await parse_body(request, EnvCreate)
    d, app = _dir(request), await _find_app(request)

    def created(e: Entity[EnvBody]) -> Change:
        return Change(
            e.id,
            f"{app.body.name}/{e.body.name}",
            "create",
            f"created {e.body.type} environment {e.body.name} in {app.body.name}",
            after=_env_view(app, e).model_dump(mode="json"),
            app=app.body.name,
        )

    try:
        env = await d.envs.insert(
            EnvBody(
                app_id=app.id,
                name=body.name,
                type=body.type,
                dedicated_delegates=body.dedicated_delegates,
            ),
            audit=in_transaction(request, created),
        )
    except Conflict:
        msg = f"{app.body.name!r} has an environment {body.name!r}"
        raise ApiProblem(409, "conflict", msg, field="name") from None
    _env_changed(request, env.id, env.body)
    return json_response(_env_view(app, env), status=201)


async def list_envs(request: web.Request) -> web.Response:
    d, app = _dir(request), await _find_app(request)
    envs = [_env_view(app, e) for e in await d.envs.list() if e.body.app_id == app.id]
    return json_response(EnvList(envs=envs))


def _env_changed(request: web.Request, env_id: str, body: EnvBody | None) -> None:
    """Task hand-out judges by environment (manager.tasks.envs): this replica now, the others
    when they hear the event."""
    c = ctx(request)
    c.tasks.envs.changed(env_id, body)
    c.bus.publish("env", env_id)


async def _find_env(request: web.Request, app: Entity[AppBody]) -> Entity[EnvBody]:
    d, key = _dir(request), request.match_info["env"]
    env = await d.envs.get(key) or await d.envs.by_key(f"{app.id}/{key}")
    if env is None or env.body.app_id != app.id:
        raise ApiProblem(404, "not_found", f"no environment {key!r} in {app.body.name!r}")
    return env


async def update_env(request: web.Request) -> web.Response:
    body = await parse_body(request, EnvUpdate)
    d, app = _dir(request), await _find_app(request)
    env = await _find_env(request, app)

    def change(b: EnvBody) -> EnvBody:
        if body.dedicated_delegates is not None:
            b.dedicated_delegates = body.dedicated_delegates
        return b

    def updated(written: tuple[EnvBody, Entity[EnvBody]]) -> Change:
        before, after = written
        return Change(
            env.id,
            f"{app.body.name}/{env.body.name}",
            "update",
            f"updated environment {env.body.name} of {app.body.name}",
            before=_env_view(app, dataclasses.replace(after, body=before)).model_dump(mode="json"),
            after=_env_view(app, after).model_dump(mode="json"),
            app=app.body.name,
        )

    try:
        # Nothing to change writes nothing, and so no event.
        _, after = await d.envs.update(env.id, change, audit=in_transaction(request, updated))
    except Gone:
        raise ApiProblem(404, "not_found", f"no environment {env.body.name!r}") from None
    _env_changed(request, after.id, after.body)
    return json_response(_env_view(app, after))


async def delete_env(request: web.Request) -> web.Response:
    d, app = _dir(request), await _find_app(request)
    env = await _find_env(request, app)

    def deleted(e: Entity[EnvBody]) -> Change:
        return Change(
            e.id,
            f"{app.body.name}/{e.body.name}",
            "delete",
            f"deleted environment {e.body.name} of {app.body.name}",
            before=_env_view(app, e).model_dump(mode="json"),
            app=app.body.name,
        )

    await d.envs.delete(env.id, audit=in_transaction(request, deleted))
    _env_changed(request, env.id, None)
    return web.Response(status=204)


def add_directory_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    users, groups, apps = "/api/v1/users", "/api/v1/groups", "/api/v1/apps"
    one_user, one_group, one_app = f"{users}/{{user}}", f"{groups}/{{group}}", f"{apps}/{{app}}"
    bad = (400, 404, 409)
    for route in (
        Route(
            "GET",
            users,
            list_users,
            "List users",
            u,
            None,
            UserList,
            query={"group": "string"},
            errors=(400,),
        ),
        Route(
            "POST",
            users,
            create_user,
            "Invite a user (answers a one-time invite token)",
            u,
            UserCreate,
            UserCreated,
            status=201,
            errors=(400, 409),
            audit="user",
        ),
        Route(
            "GET",
            one_user,
            get_user,
            "Show a user (by id or email)",
            u,
            None,
            UserView,
            errors=(404,),
        ),
        Route(
            "PATCH",
            one_user,
            update_user,
            "Change a user's name or groups",
            u,
            UserUpdate,
            UserView,
            errors=bad,
            audit="user",
        ),
        Route(
            "POST",
            f"{one_user}/disable",
            disable_user,
            "Disable a user (ends their sessions and keys)",
            u,
            None,
            UserView,
            errors=(404,),
            audit="user",
        ),
        Route(
            "POST",
            f"{one_user}/enable",
            enable_user,
            "Enable a disabled user",
            u,
            None,
            UserView,
            errors=(404, 409),
            audit="user",
        ),
        Route(
            "POST",
            f"{one_user}/unlock",
            unlock_user,
            "Lift a lockout after failed logins",
            u,
            None,
            UserView,
            errors=(404, 409),
            audit="user",
        ),
        Route(
            "POST",
            f"{one_user}/reset-2fa",
            reset_totp,
            "Turn off a user's 2FA (a lost device); ends their sessions",
            u,
            None,
            UserView,
            errors=(404, 409),
            audit="user",
        ),
        Route(
            "POST",
            f"{one_user}/logout",
            end_user_sessions,
            "End every session of a user",
            u,
            None,
            UserView,
            errors=(404,),
            audit="session",
        ),
        Route(
            "POST",
            f"{one_user}/invite",
            reinvite_user,
            "A new invite token for an invited user",
            u,
            None,
            UserCreated,
            errors=(404, 409),
            audit="user",
        ),
        Route("GET", groups, list_groups, "List user groups", u, None, GroupList),
        Route(
            "POST",
            groups,
            create_group,
            "Create a user group",
            u,
            GroupCreate,
            GroupView,
            status=201,
            errors=(400, 409),
            audit="user_group",
        ),
        Route("GET", one_group, get_group, "Show a user group", u, None, GroupView, errors=(404,)),
        Route(
            "PATCH",
            one_group,
            update_group,
            "Change a user group's permissions",
            u,
            GroupUpdate,
            GroupView,
            errors=bad,
            audit="user_group",
        ),
        Route(
            "DELETE",
            one_group,
            delete_group,
            "Delete a user group",
            u,
            None,
            None,
            status=204,
            query={"force": "boolean"},
            errors=bad,
            audit="user_group",
        ),
        Route("GET", apps, list_apps, "List applications", u, None, AppList),
        Route(
            "POST",
            apps,
            create_app,
            "Create an application",
            u,
            AppCreate,
            AppView,
            status=201,
            errors=(400, 409),
            audit="application",
        ),
        Route(
            "DELETE",
            one_app,
            delete_app,
            "Delete an application without environments",
            u,
            None,
            None,
            status=204,
            errors=(404, 409),
            audit="application",
        ),
        Route(
            "GET",
            f"{one_app}/envs",
            list_envs,
            "List an application's environments",
            u,
            None,
            EnvList,
            errors=(404,),
        ),
        Route(
            "POST",
            f"{one_app}/envs",
            create_env,
            "Create an environment",
            u,
            EnvCreate,
            EnvView,
            status=201,
            errors=bad,
            audit="environment",
        ),
        Route(
            "PATCH",
            f"{one_app}/envs/{{env}}",
            update_env,
            "Change an environment (whether it needs dedicated delegates)",
            u,
            EnvUpdate,
            EnvView,
            errors=bad,
            audit="environment",
        ),
        Route(
            "DELETE",
            f"{one_app}/envs/{{env}}",
            delete_env,
            "Delete an environment",
            u,
            None,
            None,
            status=204,
            errors=(404,),
            audit="environment",
        ),
    ):
        table.add(route)
