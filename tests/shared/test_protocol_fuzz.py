"""Fuzzing the stream frame parsers: any input parses or raises ProtocolError, nothing else."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.protocol import ProtocolError, parse_delegate_frame, parse_manager_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["hello", "heartbeat", "heartbeat_ack", "ack", "decline", "cancel", "drain", "x"]
        )
    },
    optional={
        "seq": json_values,
        "running": json_values,
        "free_slots": json_values,
        "load": json_values,
        "task_id": json_values,
        "key": json_values,
        "attempt": json_values,
        "cancel": json_values,
        "drain": json_values,
        "extra": json_values,
    },
)


def _parses_or_refuses(raw: str | bytes) -> None:
    for parse in (parse_delegate_frame, parse_manager_frame):
        with contextlib.suppress(ProtocolError):
            parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(raw: str) -> None:
    _parses_or_refuses(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused(raw: bytes) -> None:
    _parses_or_refuses(raw)


@settings(max_examples=500, deadline=None)
@given(frame_like)
def test_frame_shaped_json_parses_or_is_refused(frame: dict[str, Any]) -> None:
    _parses_or_refuses(json.dumps(frame))
