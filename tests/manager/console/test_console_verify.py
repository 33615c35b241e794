"""A verify task's page plots each query's baseline and after windows over each other on one
relative time axis, with the limit as a line, and shows the verdict and its reasons, every
text escaped."""

from __future__ import annotations

import re

from manager.console.verify_chart import HEIGHT, PAD, WIDTH, verify_view
from manager.records import TaskRecord
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from shared.ids import new_id
from shared.protocol import TaskState, VerifyPayload, VerifyWindow
from shared.verify.report import QueryReport, Report
from shared.verify.spec import VerifySpec
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.console.test_console_access import visit
from tests.manager.rbac_support import member, place
from tests.manager.verify.support import spec

XSS = '<script>window.__xss=1</script>"><img src=x onerror=alert(1)>'


def report(name: str = "error rate") -> Report:
    # The baseline is the hour before, the after window the ten minutes after a deploy: on
    # the chart both start at the left edge.
    query = QueryReport(
        name=name,
        outcome="failed",
        reason=f"rose above the limit {XSS}",
        statistic="mean",
        threshold="limit +1 %",
        unit=" %",
        baseline=1.0,
        after=4.0,
        limit=2.0,
        baseline_series=[(1000.0, 1.0), (1300.0, 0.0), (1600.0, 1.0)],
        after_series=[(5000.0, 3.0), (5300.0, 5.0)],
    )
    return Report(
        verdict="failed",
        reason=f"1 of 1 queries failed {XSS}",
        provider="http://prom.internal:9090",
        baseline_start=1000.0,
        baseline_end=1600.0,
        analysis_start=5000.0,
        analysis_end=5600.0,
        queries=[query],
    )


def test_both_windows_share_one_relative_axis_and_the_limit_is_a_line() -> None:
    view = verify_view({"report": report().model_dump_json()})
    assert view.missing is None
    (chart,) = view.charts
    base = [tuple(map(float, p.split(","))) for p in chart.baseline.split()]
    after = [tuple(map(float, p.split(","))) for p in chart.after.split()]
    # Each window from its own start: t=0 at the left, the window's end at the right.
    assert [x for x, _ in base] == [PAD, WIDTH / 2, WIDTH - PAD]
    assert [x for x, _ in after] == [PAD, WIDTH / 2]
    # One value scale for both and the limit: higher values are higher up.
    (_, b0), (_, b1), _ = base
    (_, a0), (_, a1) = after
    assert chart.limit_y is not None
    assert HEIGHT - PAD > b1 > b0 > chart.limit_y > a0 > a1 > PAD
    assert chart.span_s == 600.0


def test_a_task_without_a_readable_report_says_so() -> None:
    assert verify_view({}).missing == "no report yet"
    assert verify_view({"report": "{not json"}).missing == "the report could not be read"


async def test_the_task_page_draws_the_chart_and_escapes_every_text(
    m: Manager, store: Store
) -> None:
    app_id, env_id = await place(store, "shop", "live", "production")
    payload = VerifyPayload(
        spec=VerifySpec.model_validate(spec()),
        window=VerifyWindow(
            baseline_start=1000.0, baseline_end=1600.0, analysis_start=5000.0, analysis_end=5600.0
        ),
    )
    found = report(name=XSS)
    task = TaskRecord(
        id=new_id("task"),
        type="verify",
        state=TaskState.FAILED,
        payload=payload.model_dump(mode="json"),
        selectors=(),
        timeout_s=60,
        queue_timeout_s=60,
        max_attempts=1,
        created_at=999.0,
        finished_at=5601.0,
        app_id=app_id,
        env_id=env_id,
        outputs={"verdict": "failed", "reason": found.reason, "report": found.model_dump_json()},
    )
    stored, _ = await store.insert_task(task, idempotency_window=0)
    token = await member(store, "reader@example.com", apps=[AppGrant(actions=("read",))])
    status, page, _ = await visit(m, "GET", f"/console/tasks/{stored.id}", token)
    assert status == 200, page
    main = page.split("<main>")[1]
    assert '<span class="badge verdict-failed" id="verdict">failed</span>' in main
    assert re.search(r'<polyline class="series baseline" points="[0-9., ]+">', main)
    assert re.search(r'<polyline class="series after" points="[0-9., ]+">', main)
    assert '<line class="limit"' in main
    assert "<script" not in main
    assert "<img" not in main
    assert main.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") >= 4
