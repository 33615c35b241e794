"""Where a verification looks, from the deployment's start and end."""

from __future__ import annotations

import pytest

from manager.core.verification import timeout_for, windows
from shared.verify.spec import VerifySpec
from tests.manager.verify.support import spec


def _spec(analysis: str, baseline: str) -> VerifySpec:
    doc = spec()
    doc["window"] = {"analysis": analysis, "baseline": baseline}
    return VerifySpec.model_validate(doc)


@pytest.mark.parametrize(
    ("analysis", "baseline", "expected"),
    [
        # The deployment ran 1000..1100: neither window holds it.
        ("10m", "before", (400.0, 1000.0, 1100.0, 1700.0)),
        ("30s", "before", (970.0, 1000.0, 1100.0, 1130.0)),
        ("10m", "day", (1100.0 - 86400, 1700.0 - 86400, 1100.0, 1700.0)),
        ("1h", "week", (1100.0 - 604800, 4700.0 - 604800, 1100.0, 4700.0)),
    ],
)
def test_windows(analysis: str, baseline: str, expected: tuple[float, ...]) -> None:
    w = windows(_spec(analysis, baseline), 1000.0, 1100.0)
    assert (w.baseline_start, w.baseline_end, w.analysis_start, w.analysis_end) == expected


def test_the_timeout_covers_the_wait_and_every_request() -> None:
    s = _spec("10m", "before")
    w = windows(s, 1000.0, 1100.0)
    # Submitted at the deployment's end: the whole window to wait, then 2 requests a query.
    assert timeout_for(s, w, 1100.0) >= 600 + 2 * s.provider.query_timeout_s
    # Submitted long after: nothing to wait for, still room for the requests.
    assert timeout_for(s, w, 99_999.0) >= 2 * s.provider.query_timeout_s
