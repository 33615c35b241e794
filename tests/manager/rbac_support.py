"""Users with chosen permissions, for tests of what routes allow: a group of their own, an
active user in it, and a live session token (the way `tether login` ends)."""

from __future__ import annotations

from collections.abc import Iterable

from manager.access.directory import AppBody, Directory, EnvBody, GroupBody, SessionBody, UserBody
from manager.access.principal import SessionTokens
from manager.schemas.grants import AccountPermission, AppGrant, EnvType
from manager.store.base import Store
from shared.ids import hash_secret

# Far beyond any test clock: these sessions end only when a test ends them.
_NEVER = 4_000_000_000.0


async def member(
    store: Store,
    email: str,
    *,
    account: Iterable[AccountPermission] = (),
    apps: Iterable[AppGrant] = (),
) -> str:
    """A session token for a new user whose one group holds exactly these permissions."""
    d = Directory(store)
    group = await d.groups.insert(
        GroupBody(
            name=f"group-{email}", account_permissions=list(account), app_permissions=list(apps)
        )
    )
    user = await d.users.insert(UserBody(email=email, status="active", groups=[group.id]))
    token = await SessionTokens(store).new()
    await d.sessions.insert(
        SessionBody(token_hash=hash_secret(token), user_id=user.id, expires_at=_NEVER)
    )
    return token


async def place(store: Store, app: str, env: str, env_type: EnvType) -> tuple[str, str]:
    """(app id, env id) of ``app``/``env``, made if missing."""
    d = Directory(store)
    found = await d.apps.by_key(app) or await d.apps.insert(AppBody(name=app))
    e = await d.envs.insert(EnvBody(app_id=found.id, name=env, type=env_type))
    return found.id, e.id
