"""A webhook's mapping: fields of a delivery's JSON payload to a runbook's inputs.

A path is a JSON pointer (``/alerts/0/labels/alertname``, RFC 6901 escapes) or a dotted path
with list indices (``alerts[0].labels.alertname``, ``commonLabels.severity``). A value must
be a string, a number or a boolean, and becomes the input's raw text; the runbook then
validates it as a typed input. Values are data, never code: they reach tasks as
environment variables, and nothing here or after expands them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_VALUE_CHARS", "MappingError", "check_path", "extract", "map_inputs", "parse_path"]

MAX_VALUE_CHARS = 4096
MAX_PATH_CHARS = 256
_STEP = re.compile(r"([^.\[\]]+)|\[(\d{1,6})\]")


class MappingError(ValueError):
    """Why a payload cannot be mapped; names the input and the path, never the value."""


def parse_path(path: str) -> list[str | int]:
    """The steps of ``path``; MappingError when it is not one."""
    if not path or len(path) > MAX_PATH_CHARS:
        raise MappingError(f"a path has 1 to {MAX_PATH_CHARS} characters")
    if path.startswith("/"):
        return [
            int(p) if p.isdigit() and p.isascii() else p
            for p in (s.replace("~1", "/").replace("~0", "~") for s in path[1:].split("/"))
        ]
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        if steps and path[pos] == "." and not path.startswith("[", pos):
            pos += 1
        m = _STEP.match(path, pos)
        if m is None or m.end() == pos:
            raise MappingError(f"not a path: {path!r} (use a.b[0].c or a JSON pointer)")
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if path.endswith("."):
        raise MappingError(f"not a path: {path!r} (use a.b[0].c or a JSON pointer)")
    return steps


def check_path(path: str) -> None:
    parse_path(path)


_MISSING = object()


def extract(payload: Any, path: str) -> Any:
    """The value at ``path``, or the sentinel for a missing one (use :func:`map_inputs`)."""
    node = payload
    for step in parse_path(path):
        if isinstance(node, Mapping) and isinstance(step, str | int):
            key = str(step)
            if key not in node:
                return _MISSING
            node = node[key]
        elif isinstance(node, list) and isinstance(step, int):
            if step >= len(node):
                return _MISSING
            node = node[step]
        else:
            return _MISSING
    return node


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def map_inputs(payload: Any, mapping: Mapping[str, str]) -> dict[str, str]:
    """Each input of ``mapping`` (input name -> path) as raw text. A missing field leaves
    its input out (the runbook's default, or its own refusal, applies)."""
    out: dict[str, str] = {}
    for name, path in mapping.items():
        value = extract(payload, path)
        if value is _MISSING or value is None:
            continue
        text = _text(value)
        if text is None:
            raise MappingError(f"input {name!r}: {path} is an object or a list, not a value")
        if len(text) > MAX_VALUE_CHARS or "\x00" in text:
            raise MappingError(
                f"input {name!r}: {path} is longer than {MAX_VALUE_CHARS} or holds a NUL"
            )
        out[name] = text
    return out
