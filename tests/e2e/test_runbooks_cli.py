"""Runbooks from the real `tether` command against a real manager and delegate: an admin
applies a runbook file; one user starts a run and follows it; the run waits for approval;
the starter may not approve it, a user outside the named group may not either, another
member of the group approves it through the CLI, and the follower sees the rest run and
exits 0. Export gives back the file; diff shows a change; a user without execute is refused;
a governance standard's score shows, and a production run below it is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.harness import BIN, Cluster, Proc
from tests.e2e.test_access_cli import PASSWORD, User, admin

RUNBOOK = """\
name: restart-api
description: Restart the API after a leak
app: shop
env: prod
tags:
- ops
inputs:
- name: reason
- name: dry_run
  type: boolean
  default: false
steps:
- name: check
  kind: shell
  tags:
  - security-scan
  script: |
    echo "checking because: $INPUT_REASON"
    echo "LEAKING=yes" >> "$TETHER_OUTPUT"
- name: gate
  kind: approval
  timeout_s: 600
  groups:
  - sre
- name: restart
  kind: shell
  when: steps.check.outputs.LEAKING == "yes" && !inputs.dry_run
  script: echo restarted
"""

USE_TOKEN = """\
name: use-token
app: shop
env: prod
inputs:
- name: token
  type: secret
steps:
- name: check
  kind: shell
  script: |
    echo "the token is $INPUT_TOKEN"
    [ "$INPUT_TOKEN" = tok-0123456789-value ] && echo "token matches"
"""

STANDARD = """\
name: readiness
rules:
- rule: has_step_kind
  value: approval
  weight: 5
- rule: has_step_tagged
  value: security-scan
  weight: 3
- rule: has_rollback
  weight: 2
enforce_env_types: [production]
minimum: 100
"""


async def _user(cluster: Cluster, email: str, group: str) -> User:
    created = await admin(cluster, "user", "create", email, "--group", group)
    invite = created.stdout.strip().splitlines()[-1]
    user = User(cluster, cluster.root / f"{email}-config")
    res = await user.tether(
        "login", "--invite", invite, "--password-stdin", stdin=f"{PASSWORD}\n".encode()
    )
    assert res.code == 0, res.stderr
    return user


# About 15 CLI runs, each a Python start: beside other workers that takes its time.
@pytest.mark.timeout(300)
async def test_a_run_is_approved_by_another_user_through_the_cli(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_manager()
    await admin(cluster, "app", "create", "shop")
    await admin(cluster, "env", "create", "shop", "prod", "--type", "production")
    run_spec = "apps=shop;envs=all;actions=read,execute"
    await admin(cluster, "group", "create", "ops", "--app-permission", run_spec)
    await admin(cluster, "group", "create", "sre", "--app-permission", "apps=shop;actions=read")
    await admin(cluster, "group", "create", "viewers", "--app-permission", "apps=shop;actions=read")
    alice = await _user(cluster, "alice@example.com", "ops")
    bob = await _user(cluster, "bob@example.com", "sre")
    carol = await _user(cluster, "carol@example.com", "viewers")
    spec = tmp_path / "restart-api.yaml"
    spec.write_text(RUNBOOK)
    res = await admin(cluster, "runbook", "apply", "-f", str(spec))
    assert "runbook restart-api at version 1" in res.stdout
    # Export gives the file back as written; a changed file diffs.
    assert (await admin(cluster, "runbook", "export", "restart-api")).stdout == RUNBOOK
    assert (await admin(cluster, "runbook", "diff", "-f", str(spec))).stdout == "no changes\n"
    spec.write_text(RUNBOOK.replace("timeout_s: 600", "timeout_s: 900"))
    diff = (await admin(cluster, "runbook", "diff", "-f", str(spec))).stdout
    assert "-  timeout_s: 600\n+  timeout_s: 900\n" in diff, diff
    await cluster.start_delegate("d1")

    # Carol may read but not execute.
    res = await carol.tether("runbook", "run", "restart-api", "--input", "reason=x")
    assert (res.code, res.stderr) == (
        1,
        "error: HTTP 403 forbidden: you may not execute in shop/prod\n",
    )
    res = await alice.tether("runbook", "run", "restart-api", "--input", "nope=1")
    assert res.code == 1
    assert "input 'nope': the runbook has no such input" in res.stderr

    env = {**cluster.cli_env(), "TETHER_API_KEY": "", "TETHER_CONFIG_DIR": str(alice.config_dir)}
    follow = Proc(
        "alice-run",
        [str(BIN / "tether"), "runbook", "run", "restart-api", "--input", "reason=memory leak"],
        env,
    )
    await follow.start()
    cluster.procs.append(follow)  # stopped at teardown whatever happens
    approve = re.compile(r"tether runbook approve (run_\S+)")
    waiting = await follow.wait_until(
        lambda: next((m for line in follow.stderr if (m := approve.search(line))), None),
        "the run waiting for approval",
    )
    run_id = waiting.group(1)
    # Its first step's log came before (read from another pipe, so waited for too).
    await follow.wait_stdout("^checking because: memory leak$")

    res = await alice.tether("runbook", "approve", run_id)
    assert (res.code, res.stderr) == (
        1,
        "error: HTTP 403 forbidden: you started this run: another person must decide on it\n",
    )
    res = await carol.tether("runbook", "approve", run_id)
    assert res.code == 1
    assert "approving step 'gate' needs a member of sre" in res.stderr
    res = await bob.tether("runbook", "approve", run_id, "--reason", "dashboards agree")
    assert res.code == 0, res.stderr
    assert "approved by bob@example.com for sre: dashboards agree" in res.stdout

    assert await follow.wait_exit() == 0, follow.tail()
    await follow.wait_stdout("^restarted$")
    res = await admin(cluster, "runbook", "run-get", run_id, "--output", "json")
    run = json.loads(res.stdout)
    assert run["state"] == "succeeded"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded", "succeeded"]
    assert run["started_by"] == "alice@example.com"

    # A secret input is a secret's name: the delegate resolves it, the log masks it.
    value = tmp_path / "token"
    value.write_text("tok-0123456789-value")
    await admin(cluster, "secret", "create", "api-token", "--from-file", str(value))
    uses = tmp_path / "use-token.yaml"
    uses.write_text(USE_TOKEN)
    await admin(cluster, "runbook", "apply", "-f", str(uses))
    res = await admin(cluster, "runbook", "run", "use-token", "--input", "token=api-token")
    assert "token matches" in res.stdout
    assert "tok-0123456789-value" not in res.stdout + res.stderr
    assert "the token is ***" in res.stdout, res.stdout

    # A standard enforced in production: the scores show, and a run below it is refused.
    standard = tmp_path / "readiness.yaml"
    standard.write_text(STANDARD)
    res = await admin(cluster, "standard", "apply", "-f", str(standard))
    assert "standard readiness at version 1" in res.stdout
    shown = (await admin(cluster, "runbook", "get", "restart-api")).stdout
    assert (
        "standard readiness: 80 %, enforced here at 100 %\n  unmet: has a rollback step (2)"
        in shown
    )
    res = await alice.tether("runbook", "run", "restart-api", "--input", "reason=x")
    assert res.code == 1
    assert res.stderr == (
        "error: HTTP 409 below_standard: run refused: standard 'readiness' scores 80 %, below"
        " the 100 % required here; unmet: has a rollback step (2)\n"
    )
