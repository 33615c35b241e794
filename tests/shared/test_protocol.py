from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from shared.limits import MAX_FRAME_BYTES, Timings
from shared.protocol import (
    CapabilityPayload,
    Heartbeat,
    HeartbeatAck,
    Hello,
    HttpPayload,
    LogLine,
    ProtocolError,
    ShellPayload,
    StreamLogs,
    TaskAck,
    TaskCancel,
    TaskDecline,
    TaskDrain,
    TaskResult,
    TaskSpec,
    parse_delegate_frame,
    parse_manager_frame,
)

# Looks like something that must never be echoed into an error message or a log line.
SECRET = "sk_live_9f8e7d6c5b4a-TOPSECRET"

Parser = Callable[[str | bytes], BaseModel]
PARSERS: list[Parser] = [parse_delegate_frame, parse_manager_frame]


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def protocol_error(parse: Parser, raw: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse(raw)
    return str(info.value)


# --- frames that parse ---------------------------------------------------------------------


def test_hello_frame_parses_to_hello() -> None:
    parsed = parse_delegate_frame(frame(type="hello", key="process-key-1", running=["task_1"]))
    assert parsed == Hello(key="process-key-1", running=["task_1"])


def test_a_hello_without_its_process_key_is_refused() -> None:
    assert "key" in protocol_error(parse_delegate_frame, frame(type="hello", running=[]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (frame(type="ack", task_id="task_1", attempt=2), TaskAck),
        (frame(type="decline", task_id="task_1", attempt=2, reason="full"), TaskDecline),
    ],
)
def test_ack_and_decline_frames_parse(raw: str, expected: type[BaseModel]) -> None:
    assert type(parse_delegate_frame(raw)) is expected


def test_a_hint_of_protocol_v1_is_no_longer_a_frame() -> None:
    protocol_error(parse_manager_frame, frame(type="task_available", task_id="task_1"))


def test_heartbeat_frame_parses_to_heartbeat() -> None:
    parsed = parse_delegate_frame(frame(type="heartbeat", seq=7, running=[], free_slots=3))
    assert isinstance(parsed, Heartbeat)
    assert (parsed.seq, parsed.free_slots, parsed.load) == (7, 3, 0.0)


def test_delegate_frame_parses_from_bytes() -> None:
    assert isinstance(parse_delegate_frame(frame(type="hello", key="k" * 8).encode()), Hello)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (frame(type="heartbeat_ack", seq=3, cancel=["task_1"]), HeartbeatAck),
        (frame(type="cancel", task_id="task_1"), TaskCancel),
        (frame(type="drain"), TaskDrain),
    ],
)
def test_manager_frame_parses_to_its_type(raw: str, expected: type[BaseModel]) -> None:
    assert type(parse_manager_frame(raw)) is expected


def test_model_dump_round_trips_through_the_parser() -> None:
    ack = HeartbeatAck(seq=9, cancel=["task_2"], drain=True)
    assert parse_manager_frame(ack.model_dump_json()) == ack


def test_manager_frame_is_not_a_delegate_frame() -> None:
    message = protocol_error(parse_delegate_frame, frame(type="drain"))
    assert "type" in message or "tag" in message


# --- frames that do not --------------------------------------------------------------------


@pytest.mark.parametrize("parse", PARSERS)
def test_unknown_frame_type_is_a_protocol_error(parse: Parser) -> None:
    protocol_error(parse, frame(type="something_new"))


@pytest.mark.parametrize("parse", PARSERS)
def test_unknown_frame_type_error_does_not_echo_the_value(parse: Parser) -> None:
    assert SECRET not in protocol_error(parse, frame(type=SECRET))


@pytest.mark.parametrize("parse", PARSERS)
def test_unknown_frame_type_error_names_the_type_field(parse: Parser) -> None:
    assert protocol_error(parse, frame(type="something_new")).startswith("type")


@pytest.mark.parametrize("parse", PARSERS)
def test_frame_without_type_is_a_protocol_error(parse: Parser) -> None:
    protocol_error(parse, frame(task_id="task_1"))


def test_unknown_field_error_names_the_field_not_its_value() -> None:
    message = protocol_error(
        parse_delegate_frame, frame(type="hello", key="process-key-1", surprise=SECRET)
    )
    assert "surprise" in message
    assert SECRET not in message


def test_unknown_field_in_a_manager_frame_is_refused() -> None:
    message = protocol_error(parse_manager_frame, frame(type="drain", note=SECRET))
    assert "note" in message
    assert SECRET not in message


def test_wrong_type_error_names_the_field_not_the_value() -> None:
    raw = frame(type="heartbeat", seq=SECRET, running=[], free_slots=1)
    message = protocol_error(parse_delegate_frame, raw)
    assert "seq" in message
    assert SECRET not in message


def test_wrong_type_in_a_list_names_the_path() -> None:
    raw = frame(type="hello", key="process-key-1", running=[{"token": SECRET}])
    message = protocol_error(parse_delegate_frame, raw)
    assert "running" in message
    assert SECRET not in message


def test_out_of_range_value_error_does_not_echo_the_value() -> None:
    raw = frame(type="heartbeat", seq=-31337, running=[], free_slots=1)
    message = protocol_error(parse_delegate_frame, raw)
    assert "seq" in message
    assert "31337" not in message


def test_missing_field_error_names_the_field() -> None:
    message = protocol_error(parse_manager_frame, frame(type="cancel"))
    assert "task_id" in message


@pytest.mark.parametrize("parse", PARSERS)
def test_invalid_json_error_does_not_echo_the_input(parse: Parser) -> None:
    message = protocol_error(parse, SECRET)
    assert SECRET not in message


@pytest.mark.parametrize("parse", PARSERS)
def test_protocol_error_does_not_chain_the_validation_error(parse: Parser) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(frame(type="hello", key="process-key-1", surprise=SECRET))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("encode", [False, True])
def test_oversized_frame_is_refused_without_echoing_it(parse: Parser, encode: bool) -> None:
    text = frame(type="hello", running=[SECRET * (MAX_FRAME_BYTES // len(SECRET))])
    message = protocol_error(parse, text.encode() if encode else text)
    assert str(MAX_FRAME_BYTES) in message
    assert SECRET not in message


def test_frame_at_the_size_limit_is_accepted() -> None:
    def logs(text: str) -> str:
        line = {"seq": 0, "stream": "stdout", "ts": 1.0, "text": text}
        return frame(type="logs", id=1, task_id="t", batch={"attempt": 1, "lines": [line]})

    padding = "x" * (MAX_FRAME_BYTES - len(logs("")))
    raw = logs(padding)
    assert len(raw) == MAX_FRAME_BYTES
    assert isinstance(parse_delegate_frame(raw), StreamLogs)


def test_oversized_frame_of_multibyte_text_is_refused() -> None:
    euros = "\u20ac" * (MAX_FRAME_BYTES // 2)
    raw = json.dumps({"type": "hello", "running": [euros]}, ensure_ascii=False)
    assert len(raw) < MAX_FRAME_BYTES
    assert len(raw.encode()) > MAX_FRAME_BYTES
    protocol_error(parse_delegate_frame, raw)


# --- task spec -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "shell", "script": "echo hi"}, ShellPayload),
        ({"type": "http", "url": "https://example.internal/"}, HttpPayload),
        ({"type": "capability", "target": "db.internal:5432"}, CapabilityPayload),
    ],
)
def test_task_spec_payload_is_chosen_by_its_type(
    payload: dict[str, Any], expected: type[BaseModel]
) -> None:
    spec = TaskSpec.model_validate({"id": "task_1", "payload": payload, "timeout_s": 60})
    assert type(spec.payload) is expected


def test_task_spec_with_unknown_payload_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        TaskSpec.model_validate(
            {"id": "task_1", "payload": {"type": "ssh", "script": "x"}, "timeout_s": 60}
        )


def test_task_spec_payload_fields_must_fit_its_type() -> None:
    with pytest.raises(ValidationError):
        TaskSpec.model_validate(
            {"id": "task_1", "payload": {"type": "http", "script": "x"}, "timeout_s": 60}
        )


def test_task_spec_requires_a_positive_timeout() -> None:
    with pytest.raises(ValidationError):
        TaskSpec.model_validate(
            {"id": "task_1", "payload": {"type": "shell", "script": "x"}, "timeout_s": 0}
        )


def test_shell_env_names_must_be_identifiers() -> None:
    with pytest.raises(ValidationError):
        ShellPayload(script="true", env={"BAD-NAME": "x"})


def test_task_result_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate({"attempt": 1, "status": "succeeded", "extra": 1})


def test_task_result_refuses_a_non_final_status() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate({"attempt": 1, "status": "running"})


# --- timings -------------------------------------------------------------------------------


def test_a_log_line_of_text_is_on_the_wire_what_it_always_was() -> None:
    line = LogLine.of_bytes(3, "stdout", 1.5, "héllo".encode())
    assert json.loads(line.model_dump_json()) == {
        "seq": 3,
        "stream": "stdout",
        "ts": 1.5,
        "text": "héllo",
    }


@pytest.mark.parametrize("raw", [b"a\x00b", b"\xff", b"\xc3", bytes(range(256)), b"\x00"])
def test_a_log_line_of_other_bytes_carries_them_as_base64_and_parses_back(raw: bytes) -> None:
    line = LogLine.of_bytes(0, "stderr", 1.0, raw)
    wire = json.loads(line.model_dump_json())

    assert wire["text"] == ""
    back = LogLine.model_validate_json(line.model_dump_json())
    assert (back.raw, back.nbytes) == (raw, len(raw))


@pytest.mark.parametrize(
    "form", [{"text": "x", "data": "eA=="}, {"data": "not base64!"}, {"data": "eA"}]
)
def test_a_log_line_with_both_forms_or_bad_base64_is_refused(form: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        LogLine.model_validate({"seq": 0, "stream": "stdout", "ts": 1.0, **form})


def test_scaled_timings_multiply_every_field() -> None:
    base = Timings()
    scaled = base.scaled(0.01)
    for f in dataclasses.fields(Timings):
        assert getattr(scaled, f.name) == pytest.approx(getattr(base, f.name) * 0.01), f.name


def test_scaled_timings_leave_the_original_unchanged() -> None:
    base = Timings(heartbeat_interval=4.0)
    base.scaled(0.5)
    assert base.heartbeat_interval == 4.0


def test_scaled_keeps_custom_values() -> None:
    assert Timings(lost_after=12.0).scaled(0.25).lost_after == 3.0


@pytest.mark.parametrize(
    "frame",
    [
        # A seq past 64 bits reached the store's key derivation and failed there (500).
        {
            "type": "logs",
            "id": 1,
            "task_id": "t",
            "batch": {
                "attempt": 1,
                "lines": [{"seq": 2**70, "stream": "stdout", "ts": 1.0, "text": "x"}],
            },
        },
        {
            "type": "logs",
            "id": 1,
            "task_id": "t",
            "batch": {
                "attempt": 1,
                "lines": [{"seq": 0, "stream": "stdout", "ts": float("inf"), "text": "x"}],
            },
        },
        {"type": "heartbeat", "seq": 1, "free_slots": 1, "metrics": {"cpu": float("inf")}},
        {"type": "hello", "key": "process-key-1", "running": ["t" * 65]},
    ],
)
def test_unbounded_numbers_and_overlong_ids_are_refused_at_the_edge(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        parse_delegate_frame(json.dumps(frame))
