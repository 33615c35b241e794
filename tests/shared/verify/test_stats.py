"""The verdict functions, table by table, and the properties a verdict must keep."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.verify.stats import (
    Direction,
    Outcome,
    Threshold,
    counter_increases,
    finite,
    judge,
    percentile,
)

UP, DOWN = Direction.UP, Direction.DOWN


@pytest.mark.parametrize(
    ("baseline", "after", "direction", "threshold", "outcome"),
    [
        # error rate in per cent, +1 pp allowed
        ([0.3] * 20, [4.1] * 20, UP, Threshold(delta=1), Outcome.FAILED),
        ([0.3] * 20, [1.2] * 20, UP, Threshold(delta=1), Outcome.PASSED),
        # an absolute ceiling ignores the baseline
        ([9.0] * 5, [0.5] * 5, UP, Threshold(absolute=1), Outcome.PASSED),
        ([0.1] * 5, [1.5] * 5, UP, Threshold(absolute=1), Outcome.FAILED),
        # throughput may fall 20 %, not more
        ([100.0] * 10, [85.0] * 10, DOWN, Threshold(ratio=0.2), Outcome.PASSED),
        ([100.0] * 10, [70.0] * 10, DOWN, Threshold(ratio=0.2), Outcome.FAILED),
        # a rise of a down-is-bad metric never fails
        ([100.0] * 10, [500.0] * 10, DOWN, Threshold(ratio=0.2), Outcome.PASSED),
        # one spike in the window is not the median
        ([0.3] * 20, [0.3] * 19 + [90.0], UP, Threshold(delta=1), Outcome.PASSED),
        # too few points on either side
        ([0.3] * 2, [4.1] * 20, UP, Threshold(delta=1), Outcome.INCONCLUSIVE),
        ([0.3] * 20, [], UP, Threshold(delta=1), Outcome.INCONCLUSIVE),
        # NaN samples are gaps, not values
        ([math.nan] * 20, [4.1] * 20, UP, Threshold(delta=1), Outcome.INCONCLUSIVE),
        # an absolute threshold needs no baseline
        ([], [0.5] * 5, UP, Threshold(absolute=1), Outcome.PASSED),
    ],
)
def test_verdicts(
    baseline: list[float],
    after: list[float],
    direction: Direction,
    threshold: Threshold,
    outcome: Outcome,
) -> None:
    assert judge(baseline, after, direction=direction, threshold=threshold).outcome is outcome


def test_the_reason_reads_like_a_sentence() -> None:
    got = judge(
        [0.3] * 20,
        [4.1] * 20,
        direction=UP,
        threshold=Threshold(delta=1),
        name="error rate",
        unit=" %",
    )
    assert got.reason == "error rate median 4.1 % after vs 0.3 % before, limit +1 pp"
    assert got.baseline == pytest.approx(0.3)
    assert got.after == pytest.approx(4.1)
    assert got.limit == pytest.approx(1.3)
    assert got.margin == pytest.approx(-2.8)


def test_too_few_points_say_where() -> None:
    got = judge([1.0], [1.0] * 10, direction=UP, threshold=Threshold(delta=1), min_points=5)
    assert got.outcome is Outcome.INCONCLUSIVE
    assert "1 point(s) before" in got.reason
    assert "at least 5" in got.reason


def test_a_percentile_other_than_the_median() -> None:
    after = [1.0] * 90 + [50.0] * 10
    p99 = judge([1.0] * 100, after, direction=UP, threshold=Threshold(absolute=10), statistic=99)
    median = judge([1.0] * 100, after, direction=UP, threshold=Threshold(absolute=10))
    assert (p99.outcome, p99.statistic) == (Outcome.FAILED, "p99")
    assert median.outcome is Outcome.PASSED


def test_significance_keeps_a_noisy_overlap_from_failing() -> None:
    before = [1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0, 8.0]
    after = [2.0, 5.5, 3.0, 6.5, 4.0, 7.5, 4.5, 8.5]
    loose = judge(before, after, direction=UP, threshold=Threshold(delta=0.1))
    tested = judge(before, after, direction=UP, threshold=Threshold(delta=0.1), significance=0.05)
    assert loose.outcome is Outcome.FAILED
    assert tested.outcome is Outcome.PASSED
    assert tested.p_value is not None
    assert tested.p_value > 0.05
    assert "not significantly worse" in tested.reason


def test_significance_fails_a_clear_shift() -> None:
    before = [1.0 + i * 0.01 for i in range(30)]
    after = [3.0 + i * 0.01 for i in range(30)]
    got = judge(before, after, direction=UP, threshold=Threshold(delta=0.5), significance=0.01)
    assert got.outcome is Outcome.FAILED
    assert got.p_value is not None
    assert got.p_value < 1e-6


@pytest.mark.parametrize(
    ("values", "increases"),
    [
        ([0, 1, 3, 6], [1, 2, 3]),
        ([10, 12, 2, 5], [2, 2, 3]),  # a restart: counting began again from zero
        ([5, math.nan, 7], [2]),  # a gap
        ([], []),
    ],
)
def test_counter_increases(values: list[float], increases: list[float]) -> None:
    assert counter_increases(values) == increases


def test_finite_and_percentile() -> None:
    assert finite([1.0, math.inf, -math.inf, math.nan, 2.0]) == [1.0, 2.0]
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


@pytest.mark.parametrize(
    "kwargs", [{}, {"absolute": 1.0, "delta": 1.0}, {"delta": -1.0}, {"ratio": math.nan}]
)
def test_a_threshold_is_exactly_one_finite_number(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="threshold"):
        Threshold(**kwargs)


samples = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
windows = st.lists(samples, min_size=3, max_size=60)
directions = st.sampled_from([UP, DOWN])
thresholds = st.one_of(
    st.builds(Threshold, delta=st.floats(min_value=0, max_value=1e3)),
    st.builds(Threshold, ratio=st.floats(min_value=0, max_value=10)),
)


@given(
    value=samples,
    n=st.integers(3, 60),
    m=st.integers(3, 60),
    direction=directions,
    threshold=thresholds,
    significance=st.sampled_from([None, 0.05]),
)
def test_a_constant_series_never_fails(
    value: float,
    n: int,
    m: int,
    direction: Direction,
    threshold: Threshold,
    significance: float | None,
) -> None:
    got = judge(
        [value] * n,
        [value] * m,
        direction=direction,
        threshold=threshold,
        significance=significance,
    )
    assert got.outcome is Outcome.PASSED


@given(
    before=windows,
    after=windows,
    scale=st.sampled_from([0.001, 0.5, 2.0, 10.0, 1000.0]),
    direction=directions,
    ratio=st.floats(min_value=0, max_value=5),
    statistic=st.sampled_from([50.0, 90.0, 99.0]),
    significance=st.sampled_from([None, 0.05]),
)
def test_scaling_both_windows_never_changes_the_verdict(
    before: list[float],
    after: list[float],
    scale: float,
    direction: Direction,
    ratio: float,
    statistic: float,
    significance: float | None,
) -> None:
    """A relative threshold and a rank test do not care about units: a metric in seconds
    and the same in milliseconds get the same verdict. (Powers of two and exact decimals keep
    float rounding out of the comparison at the limit, so the scale factors are few.)"""

    def verdict(k: float) -> Outcome:
        return judge(
            [v * k for v in before],
            [v * k for v in after],
            direction=direction,
            threshold=Threshold(ratio=ratio),
            statistic=statistic,
            significance=significance,
        ).outcome

    one = verdict(1.0)
    scaled = verdict(scale)
    if one is not scaled:
        # Only a statistic sitting on the limit itself may tip by rounding.
        got = judge(
            before,
            after,
            direction=direction,
            threshold=Threshold(ratio=ratio),
            statistic=statistic,
        )
        assert got.margin is not None
        assert abs(got.margin) <= 1e-9 * max(1.0, abs(got.limit or 0.0))
