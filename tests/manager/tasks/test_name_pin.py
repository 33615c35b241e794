"""A delegate's name is its own pick: it pins no work to a narrowed token's delegate, and a
delegate that may not run a task learns nothing of it by reporting for it. Both were found
by an attack on a running manager: a staging token's delegate registered as ``vault`` was
handed an account-wide task that asked for the label ``vault``, with its secret env."""

from __future__ import annotations

import pytest

from manager.core.eligibility import DelegateScope, EnvFacts
from manager.errors import Conflicting, NotFound
from manager.schemas.grants import Target
from manager.schemas.tasks import TaskSubmit
from shared.protocol import LogBatch, LogLine, TaskResult, TaskState
from tests.manager.tasks.test_handout import World, world

__all__ = ["world"]  # the fixture, from the hand-out's tests

STAGING_POOL = DelegateScope(
    env_types=frozenset({"non_production"}), selectors=frozenset({"stg-pool"})
)


async def test_a_narrowed_delegate_named_after_a_label_is_not_handed_work_asking_for_it(
    world: World,
) -> None:
    named = world.connect("vault", scope=STAGING_POOL)
    asked = await world.submit(selectors=["vault"], secret_env={"TOKEN": "account-wide"})
    assert world.streams["vault"].assignments() == []
    assert await world.task(asked) == (TaskState.QUEUED, 0, None)
    # Named by the id the manager gave it, the same work is its to run (as profile runs).
    pinned = await world.submit(selectors=[named.id])
    assert world.streams["vault"].assignments() == [(pinned, 1)]


async def test_an_ineligible_delegate_reporting_for_a_task_is_told_it_does_not_exist(
    world: World,
) -> None:
    world.handout._envs = world.tasks.envs.facts  # as the app wires them
    world.tasks.envs.facts["env_prod"] = EnvFacts("app_1", "production", dedicated=True)
    holder = world.connect("prod", scope=DelegateScope(envs=frozenset({"env_prod"})))
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    task, _ = await world.tasks.submit(req, target=Target("app_1", "env_prod", "production"))
    await world.settle()
    assert world.streams["prod"].assignments() == [(task.id, 1)]
    outsider = world.connect("staging", scope=STAGING_POOL)
    result = TaskResult(attempt=1, status="succeeded", exit_code=0)
    batch = LogBatch(attempt=1, lines=[LogLine(seq=0, stream="stdout", ts=0.0, text="forged")])
    answers = []
    for task_id in (task.id, "task_none"):
        with pytest.raises(NotFound) as refused:
            await world.tasks.record_result(outsider, task_id, result)
        answers.append(refused.value.message.replace(task_id, "<id>"))
        with pytest.raises(NotFound) as refused:
            await world.tasks.append_logs(outsider, task_id, batch)
        answers.append(refused.value.message.replace(task_id, "<id>"))
    # The same words for a task it may not run as for one that does not exist.
    assert answers[:2] == answers[2:]
    assert await world.task(task.id) == (TaskState.RUNNING, 1, holder.id)
    # A delegate that may run it is still told its attempt is stale.
    other = world.connect("other", scope=DelegateScope(envs=frozenset({"env_prod"})))
    with pytest.raises(Conflicting):
        await world.tasks.record_result(other, task.id, result)
