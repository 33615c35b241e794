"""The query's filter of what a reader may see (manager.api.task_access.readable) keeps
exactly the tasks a read of each would show, on either store: a listing applies it before
its limit (tests/manager/api/test_list_readable.py tells why)."""

from __future__ import annotations

import itertools

from manager.access.directory import Directory
from manager.access.places import places
from manager.api.task_access import readable
from manager.core.rbac import Grants
from manager.records import TaskFilter
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from tests.manager.rbac_support import place
from tests.manager.store.test_store import task


def _grant_lists(app: dict[str, str], env: dict[str, str]) -> list[list[AppGrant]]:
    return [
        [AppGrant(envs="non_production", actions=("read",))],
        [AppGrant(envs="production", actions=("read",))],
        [AppGrant(apps=(app["shop"],), actions=("read",))],
        [AppGrant(envs=(env["shop/staging"],), actions=("read", "execute"))],
        [AppGrant(apps=(app["shop"],), envs="production", actions=("read",))],
        [AppGrant(apps=(app["billing"],), envs="non_production", actions=("read",))],
        [AppGrant(actions=("execute",))],  # no read at all
        [
            AppGrant(apps=(app["billing"],), actions=("read",)),
            AppGrant(envs=(env["shop/staging"],), actions=("read",)),
        ],
        [AppGrant(actions=("read",))],  # everything: no filter at all
    ]


async def test_the_querys_filter_keeps_exactly_the_tasks_a_read_may_see(store: Store) -> None:
    ids = {
        "shop/staging": await place(store, "shop", "staging", "non_production"),
        "shop/prod": await place(store, "shop", "prod", "production"),
        "billing/prod": await place(store, "billing", "prod", "production"),
        "shop/gone": await place(store, "shop", "gone", "non_production"),
    }
    homes: list[tuple[str | None, str | None]] = [(None, None), *ids.values()]
    made = 0
    for (app_id, env_id), _ in itertools.product(homes, range(2)):
        made += 1
        await store.insert_task(
            task(f"task_{made:02d}", created_at=1_000.0 + made, app_id=app_id, env_id=env_id),
            idempotency_window=0,
        )
    directory = Directory(store)
    # Its tasks stay, judged as production of their application.
    assert await directory.envs.delete(ids["shop/gone"][1])
    where = await places(directory)
    app = {"shop": ids["shop/prod"][0], "billing": ids["billing/prod"][0]}
    env = {k: v[1] for k, v in ids.items()}
    everything = await store.list_tasks(TaskFilter(limit=1000))
    assert len(everything) == made
    for grant_list in _grant_lists(app, env):
        grants = Grants(frozenset(), tuple(grant_list))
        judged = [t.id for t in everything if grants.allows(where.target(t), "read")]
        flt = TaskFilter(limit=1000, readable=readable(grants, where))
        listed = [t.id for t in await store.list_tasks(flt)]
        assert listed == judged, grant_list
    # Each home held its share: the judgment above was not vacuous.
    assert {t.env_id for t in everything} == {None, *(env for _, env in ids.values())}
