"""A run's inputs checked against the runbook's typed inputs, before anything runs.

Values come as text (``--input k=v``, a webhook's mapped field) or as JSON scalars; each is
turned into its type or refused with the input's name and why. A secret input is the name
of a Tether secret (the delegate resolves it; its value never passes through here).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from manager.core.runexpr import SecretRef
from manager.schemas.runbooks import InputDef, RunbookDefinition

__all__ = ["InputError", "validate_inputs"]

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_SECRET_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class InputError(ValueError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"input {name!r}: {reason}")
        self.name = name
        self.reason = reason


def validate_inputs(definition: RunbookDefinition, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The run's inputs by name, typed: str, float, bool, or :class:`SecretRef`. Unknown
    names, missing required inputs and values of the wrong type raise :class:`InputError`."""
    known = {i.name: i for i in definition.inputs}
    for name in raw:
        if name not in known:
            shown = name if len(name) <= 64 else name[:61] + "..."
            raise InputError(shown, "the runbook has no such input")
    out: dict[str, Any] = {}
    for spec in definition.inputs:
        if spec.name in raw and raw[spec.name] is not None:
            out[spec.name] = _typed(spec, raw[spec.name])
        elif spec.default is not None:
            out[spec.name] = _typed(spec, spec.default)
        elif spec.required:
            raise InputError(spec.name, "is required")
    return out


def _typed(spec: InputDef, value: Any) -> Any:
    if spec.type == "number":
        return _number(spec, value)
    if spec.type == "boolean":
        return _boolean(spec, value)
    if not isinstance(value, str):
        raise InputError(spec.name, f"expected text, got {type(value).__name__}")
    if len(value) > spec.max_length:
        raise InputError(spec.name, f"longer than {spec.max_length} characters")
    if "\x00" in value:
        raise InputError(spec.name, "holds a NUL character")
    if spec.type == "enum":
        if value not in spec.values:
            raise InputError(spec.name, f"must be one of {', '.join(spec.values)}")
        return value
    if spec.type == "secret":
        if len(value) > 128 or _SECRET_NAME.fullmatch(value) is None:
            raise InputError(spec.name, "is not a secret name")
        return SecretRef(value)
    return value


def _number(spec: InputDef, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(spec.name, "expected a number, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            raise InputError(spec.name, "is not a number") from None
    else:
        raise InputError(spec.name, "is not a number")
    if not math.isfinite(number):
        raise InputError(spec.name, "must be a finite number")
    return number


def _boolean(spec: InputDef, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise InputError(spec.name, "expected true or false")
