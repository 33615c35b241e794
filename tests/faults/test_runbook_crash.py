"""``kill -9`` of the manager in the middle of a runbook run, and a restart on the same data
dir and port: the run carries on where it stopped, and no step runs twice.

Each step appends a line to a file on the delegate's host, so a repeated step would show as
a repeated line. The second step is held at a gate until the manager is dead; its result
waits in the delegate's spool. Every wait is on an event (a manager's or the delegate's log
line, a process's exit), never a sleep. The manager runs with the production lease and start
grace (the ``production_leases`` marker): a restart on a loaded machine cannot outlast
the lease, which at the harness's scale is 1.5 s.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster

RUNBOOK = """\
name: three-steps
app: shop
env: prod
inputs:
  - name: label
steps:
  - name: first
    kind: shell
    script: |
      echo "first $INPUT_LABEL" >> {marks}
      echo "STAGE=one" >> "$TETHER_OUTPUT"
  - name: second
    kind: shell
    script: |
      echo second-start >> {marks}
      while [ ! -e {gate} ]; do sleep 0.02; done
      echo second-end >> {marks}
  - name: third
    kind: shell
    when: steps.first.outputs.STAGE == "one"
    script: echo third >> {marks}
"""


# Three manager starts and a dozen other processes: on a loaded machine the default
# timeout of a test is too short (every wait inside is on an event, with its own bound).
@pytest.mark.timeout(300)
@pytest.mark.production_leases
async def test_a_run_outlives_a_manager_kill_and_no_step_repeats(
    running: Cluster, tmp_path: Path
) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    for args in (
        ("app", "create", "shop"),
        ("env", "create", "shop", "prod", "--type", "production"),
    ):
        res = await running.tether(*args)
        assert res.code == 0, res.stderr
    spec = tmp_path / "three-steps.yaml"
    spec.write_text(RUNBOOK.format(marks=marks, gate=gate))
    res = await running.tether("runbook", "apply", "-f", str(spec))
    assert res.code == 0, res.stderr
    delegate = await running.start_delegate("steady")
    res = await running.tether("runbook", "run", "three-steps", "--input", "label=x", "--no-follow")
    assert res.code == 0, res.stderr
    run_id = res.last_line
    assert running.manager is not None
    manager = running.manager
    # The second step's task is running on the delegate: its id is stored with the run.
    changed = await manager.wait_event(
        "runbook run changed", run_id=run_id, steps=["succeeded", "running", "pending"]
    )
    second = changed["tasks"][1]
    await delegate.wait_event("task started", task_id=second)
    await manager.stop(signal.SIGKILL)

    # The manager is gone: the step ends now, its result spooled on the delegate.
    gate.touch()
    finished = await delegate.wait_event("task finished", task_id=second)
    assert (finished["status"], finished["delivery"]) == ("succeeded", "spooled")
    restarted = await running.start_manager(port=running.port)
    done = await restarted.wait_event("runbook run changed", run_id=run_id, state="succeeded")
    assert done["steps"] == ["succeeded", "succeeded", "succeeded"]
    # Each step ran once: the first was not submitted again, the second not rerun.
    assert marks.read_text().splitlines() == ["first x", "second-start", "second-end", "third"]
    res = await running.tether("runbook", "run-get", run_id, "--output", "json")
    assert res.code == 0, res.stderr
    assert '"state": "succeeded"' in res.stdout
