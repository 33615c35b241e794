"""Secret expressions in scripts, environment values and HTTP fields.

Three forms, each naming one secret::

    ${secrets.getValue("name")}          the secret's value                kind "value"
    ${configFile.getAsString("name")}    a file secret's content as text   kind "file_string"
    ${configFile.getAsBase64("name")}    a file secret's content, base64   kind "file_base64"

The rules, all decided here so that the manager (which checks scope before anything runs)
and the delegate (which substitutes) read a text the same way:

- The name is in single or double quotes; spaces and tabs may stand on either side of it
  inside the parentheses, and nowhere else in the expression.
- A name is 1 to 128 characters: segments of ``A-Z a-z 0-9 _ . -``, each starting with a
  letter, a digit or ``_``, joined by ``/`` (``db-password``, ``account.api_key``,
  ``team/prod/tls.pem``). No empty segment, so no ``//``, no leading or trailing ``/``.
- Every ``${secrets.`` and ``${configFile.`` must start a whole, valid expression; anything
  else there raises :class:`ExpressionError` with the position, so a typo fails the task
  before it runs instead of reaching the shell as literal text. Other ``${...}`` (shell
  ``${HOME}``, ``${var:-x}``) is left alone. A JavaScript or Groovy template that means
  ``${secrets.x}`` for itself must escape it.
- Escape: ``$${secrets.getValue("x")}`` renders as the literal text
  ``${secrets.getValue("x")}``. ``$$`` is an escape only directly before ``{secrets.`` or
  ``{configFile.``; anywhere else it is left as it is (in a shell it is the process id). A
  longer run of ``$`` before such a brace loses one ``$`` and stays literal.
- Resolved values are inserted as they are and never scanned again: a value that itself
  looks like an expression is not expanded.
- An error gives the offset and line:column and says what was expected; it never holds a
  resolved value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_NAME_LENGTH",
    "ExpressionError",
    "Kind",
    "SecretExpr",
    "find_expressions",
    "referenced_names",
    "render",
]

Kind = Literal["value", "file_string", "file_base64"]

MAX_NAME_LENGTH = 128

_FUNCTIONS: dict[tuple[str, str], Kind] = {
    ("secrets", "getValue"): "value",
    ("configFile", "getAsString"): "file_string",
    ("configFile", "getAsBase64"): "file_base64",
}
_EXPECTED = ", ".join(f"{ns}.{fn}" for ns, fn in _FUNCTIONS)

# A run of "$" before "{secrets." or "{configFile.": one "$" starts an expression, more
# are an escape.
_TRIGGER = re.compile(r"(\$+)\{(?:secrets|configFile)\.")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANK = re.compile(r"[ \t]*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_./-]*")
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
# Words quoted back in an error message are cut short: they come from the user's text.
_QUOTE_MAX = 40


class ExpressionError(ValueError):
    """A malformed secret expression. ``position`` is the offset in the text."""

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.position = position
        self.line = text.count("\n", 0, position) + 1
        self.column = position - (text.rfind("\n", 0, position) + 1) + 1
        super().__init__(f"{reason} (line {self.line}, column {self.column}, offset {position})")


@dataclass(frozen=True, slots=True)
class SecretExpr:
    """One expression: what it asks for, and where it stands (``text[start:end]``)."""

    kind: Kind
    name: str
    start: int
    end: int


def find_expressions(text: str) -> list[SecretExpr]:
    """Every secret expression in ``text``, in order; ExpressionError if one is malformed."""
    return [item for item in _scan(text) if isinstance(item, SecretExpr)]


def render(text: str, resolve: Callable[[SecretExpr], str]) -> str:
    """``text`` with each expression replaced by ``resolve(expr)`` and escapes undone.

    The whole text is checked before ``resolve`` is first called, so a malformed expression
    late in a script fails before any secret is fetched.
    """
    items = list(_scan(text))
    if not items:
        return text
    out: list[str] = []
    pos = 0
    for item in items:
        if isinstance(item, SecretExpr):
            out.append(text[pos : item.start])
            out.append(resolve(item))
            pos = item.end
        else:
            out.append(text[pos:item])
            pos = item + 1
    out.append(text[pos:])
    return "".join(out)


def referenced_names(texts: Iterable[str]) -> set[tuple[Kind, str]]:
    """The (kind, name) pairs the texts ask for: what the manager checks scope against."""
    return {(expr.kind, expr.name) for text in texts for expr in find_expressions(text)}


def _scan(text: str) -> Iterator[SecretExpr | int]:
    """Expressions, and the offsets of the ``$`` characters that escapes drop."""
    pos = 0
    while (match := _TRIGGER.search(text, pos)) is not None:
        brace = match.end(1)
        if brace - match.start(1) > 1:
            yield brace - 1
            pos = match.end()
            continue
        expr = _parse(text, match.start())
        yield expr
        pos = expr.end


def _parse(text: str, start: int) -> SecretExpr:
    """The expression at ``start``, where ``text`` is known to read ``${namespace.``."""
    namespace_match = _IDENT.match(text, start + 2)
    assert namespace_match is not None  # the trigger matched a namespace here
    namespace = namespace_match.group()
    pos = namespace_match.end() + 1
    function_match = _IDENT.match(text, pos)
    if function_match is None:
        raise ExpressionError(f"expected a function name after '{namespace}.'", text, pos)
    function = function_match.group()
    kind = _FUNCTIONS.get((namespace, function))
    if kind is None:
        shown = _short(f"{namespace}.{function}")
        raise ExpressionError(f"unknown function '{shown}'; expected one of {_EXPECTED}", text, pos)
    pos = function_match.end()
    if text[pos : pos + 1] != "(":
        raise ExpressionError(f"expected '(' after '{namespace}.{function}'", text, pos)
    pos = _skip_blank(text, pos + 1)
    quote = text[pos : pos + 1]
    if quote not in ("'", '"'):
        raise ExpressionError("expected a quoted secret name", text, pos)
    name_start = pos + 1
    name_end = _match_end(_NAME_CHARS, text, name_start)
    closing = text[name_end : name_end + 1]
    if closing != quote:
        if closing in ("", "\n", "\r"):
            raise ExpressionError("unterminated secret name", text, name_start - 1)
        if closing in ("'", '"'):
            raise ExpressionError("secret name closed with the other quote", text, name_end)
        raise ExpressionError(
            f"character {closing!r} is not allowed in a secret name", text, name_end
        )
    _check_name(text[name_start:name_end], text, name_start)
    pos = _skip_blank(text, name_end + 1)
    if text[pos : pos + 1] != ")":
        raise ExpressionError("expected ')' after the secret name", text, pos)
    if text[pos + 1 : pos + 2] != "}":
        raise ExpressionError("expected '}' to close the expression", text, pos + 1)
    return SecretExpr(kind=kind, name=text[name_start:name_end], start=start, end=pos + 2)


def _check_name(name: str, text: str, position: int) -> None:
    if not name:
        raise ExpressionError("empty secret name", text, position)
    if len(name) > MAX_NAME_LENGTH:
        raise ExpressionError(
            f"secret name longer than {MAX_NAME_LENGTH} characters", text, position
        )
    if _NAME.fullmatch(name) is None:
        raise ExpressionError(
            "a secret name is segments of letters, digits, '_', '.' and '-', each starting "
            "with a letter, a digit or '_', joined by '/'",
            text,
            position,
        )


def _skip_blank(text: str, pos: int) -> int:
    return _match_end(_BLANK, text, pos)


def _match_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    # Both patterns used here match the empty string, so a match always exists.
    match = pattern.match(text, pos)
    assert match is not None
    return match.end()


def _short(word: str) -> str:
    return word if len(word) <= _QUOTE_MAX else word[: _QUOTE_MAX - 3] + "..."
