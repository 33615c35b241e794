"""A webhook's mapping of payload fields to runbook inputs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manager.core.hookmap import MappingError, extract, map_inputs

ALERTMANAGER = {
    "groupKey": '{}:{alertname="HighLoad"}',
    "status": "firing",
    "commonLabels": {"alertname": "HighLoad", "severity": "critical", "a/b": "slash"},
    "alerts": [{"labels": {"alertname": "HighLoad", "instance": "db-1:9100"}, "value": 3.5}],
    "truncatedAlerts": 0,
    "ok": True,
}


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ({"alert": "alerts[0].labels.alertname"}, {"alert": "HighLoad"}),
        ({"alert": "/alerts/0/labels/alertname"}, {"alert": "HighLoad"}),
        ({"sev": "commonLabels.severity"}, {"sev": "critical"}),
        ({"x": "/commonLabels/a~1b"}, {"x": "slash"}),
        (
            {"v": "alerts[0].value", "n": "truncatedAlerts", "b": "ok"},
            {"v": "3.5", "n": "0", "b": "true"},
        ),
        ({"missing": "alerts[3].labels.alertname", "gone": "nope.nope"}, {}),
    ],
)
def test_mapping(mapping: dict[str, str], expected: dict[str, str]) -> None:
    assert map_inputs(ALERTMANAGER, mapping) == expected


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"labels": "commonLabels"}, "an object or a list"),
        ({"x": "a..b"}, "not a path"),
        ({"x": ".a"}, "not a path"),
        ({"x": "a."}, "not a path"),
        ({"x": ""}, "1 to 256"),
    ],
)
def test_mapping_refusals(mapping: dict[str, str], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        map_inputs(ALERTMANAGER, mapping)


def test_a_value_is_never_interpreted() -> None:
    payload = {"cmd": "$(rm -rf /); `id` ${HOME}"}
    assert map_inputs(payload, {"c": "cmd"}) == {"c": "$(rm -rf /); `id` ${HOME}"}


@pytest.mark.parametrize("value", ["a\x00b", "x" * 4097])
def test_a_nul_or_an_overlong_value_is_refused(value: str) -> None:
    with pytest.raises(MappingError, match="longer than 4096 or holds a NUL"):
        map_inputs({"v": value}, {"x": "v"})


_keys = st.text(
    alphabet=st.characters(blacklist_characters=".[]/~", min_codepoint=33), min_size=1, max_size=8
)
# A NUL is refused by map_inputs (test_a_nul_or_an_overlong_value_is_refused).
_leaves = st.one_of(
    st.text(st.characters(blacklist_characters="\x00"), max_size=20), st.integers(), st.booleans()
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.one_of(_keys, st.integers(0, 3)), min_size=1, max_size=5),
    leaf=_leaves,
)
def test_both_path_forms_reach_the_same_leaf(steps: list[str | int], leaf: Any) -> None:
    """A payload built along the steps: the dotted path and the pointer both reach the
    leaf, and map_inputs hands back its text."""
    node: Any = leaf
    for step in reversed(steps):
        node = [None] * step + [node] if isinstance(step, int) else {step: node}
    if isinstance(steps[0], int):
        return  # a dotted path starts with a key
    dotted = "".join(
        f"[{s}]" if isinstance(s, int) else (f".{s}" if i else s) for i, s in enumerate(steps)
    )
    pointer = "".join(f"/{s}" for s in steps)
    assert extract(node, dotted) == leaf
    assert extract(node, pointer) == leaf
    got = map_inputs(node, {"x": dotted})
    if isinstance(leaf, bool):
        assert got == {"x": "true" if leaf else "false"}
    elif isinstance(leaf, int):
        assert got == {"x": str(leaf)}
    else:
        assert got == {"x": leaf}
