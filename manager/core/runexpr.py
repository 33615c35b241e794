"""The small expression language of runbooks: conditions (``when``) and ``${{ ... }}``
templates in step fields, over the run's inputs and earlier steps' outcomes.

It only reads values and compares them; it calls nothing, so a runbook cannot make the
manager do anything but read what the run already holds::

    expr    := or
    or      := and ("||" and)*
    and     := not ("&&" not)*
    not     := "!" not | compare
    compare := primary (("==" | "!=" | "<" | "<=" | ">" | ">=") primary)?
    primary := STRING | NUMBER | true | false | null | ref | "(" expr ")"
    ref     := inputs.NAME | steps.NAME.status | steps.NAME.outputs.KEY

Strings are in single or double quotes with backslash escapes of the quote and the
backslash. Outputs are text; ``<``/``>`` compare numbers when both sides read as numbers,
``==`` compares numbers when both do and text otherwise. A value is false when it is
false, null, empty, ``"false"`` or ``"0"``.

A secret input is a reference (:class:`SecretRef`), never a value: a template renders it as
the secret expression the delegate resolves (``${secrets.getValue("name")}``), and a
condition may not compare it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "ExprError",
    "Scope",
    "SecretRef",
    "Value",
    "evaluate",
    "parse",
    "references",
    "render",
    "template_expressions",
    "truthy",
]

MAX_EXPR_LENGTH = 1024


class ExprError(ValueError):
    """A malformed expression, or one that reads what the run does not have."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str

    def expression(self) -> str:
        return '${secrets.getValue("' + self.name + '")}'


Value = str | float | bool | None | SecretRef


@dataclass(frozen=True, slots=True)
class Scope:
    inputs: Mapping[str, object]
    # step name -> (status, outputs)
    steps: Mapping[str, tuple[str, Mapping[str, str]]]


# -- the syntax tree ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lit:
    value: Value


@dataclass(frozen=True, slots=True)
class Ref:
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class Bin:
    op: str
    left: Node
    right: Node


Node = Lit | Ref | Not | Bin

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<num>-?\d+(?:\.\d+)?)
      | (?P<str>"(?:[^"\\]|\\["\\])*"|'(?:[^'\\]|\\['\\])*')
      | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()])
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*)
    )""",
    re.VERBOSE,
)
_COMPARE = ("==", "!=", "<", "<=", ">", ">=")


def _tokens(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_EXPR_LENGTH:
        raise ExprError(f"an expression is at most {MAX_EXPR_LENGTH} characters")
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExprError(f"unexpected character {text[pos:].strip()[:1]!r} at {pos}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExprError("the expression ends too early")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.or_()
        if self.peek() is not None:
            raise ExprError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            node = Bin("||", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek() == ("op", "&&"):
            self.take()
            node = Bin("&&", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.peek() == ("op", "!"):
            self.take()
            return Not(self.not_())
        return self.compare()

    def compare(self) -> Node:
        node = self.primary()
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in _COMPARE:
            self.take()
            node = Bin(token[1], node, self.primary())
        return node

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return Lit(float(text))
        if kind == "str":
            return Lit(re.sub(r"\\(.)", r"\1", text[1:-1]))
        if kind == "op" and text == "(":
            node = self.or_()
            if self.take() != ("op", ")"):
                raise ExprError("expected ')'")
            return node
        if kind == "name":
            if text in ("true", "false"):
                return Lit(text == "true")
            if text == "null":
                return Lit(None)
            return Ref(_check_ref(tuple(text.split("."))))
        raise ExprError(f"unexpected {text!r}")


def _check_ref(path: tuple[str, ...]) -> tuple[str, ...]:
    if path[0] == "inputs" and len(path) == 2:
        return path
    if path[0] == "steps" and len(path) == 3 and path[2] == "status":
        return path
    if path[0] == "steps" and len(path) == 4 and path[2] == "outputs":
        return path
    raise ExprError(
        f"unknown reference {'.'.join(path)!r}: use inputs.NAME, steps.NAME.status or"
        " steps.NAME.outputs.KEY"
    )


def parse(text: str) -> Node:
    return _Parser(text).parse()


def references(node: Node) -> Iterator[tuple[str, ...]]:
    if isinstance(node, Ref):
        yield node.path
    elif isinstance(node, Not):
        yield from references(node.operand)
    elif isinstance(node, Bin):
        yield from references(node.left)
        yield from references(node.right)


def _lookup(path: tuple[str, ...], scope: Scope) -> Value:
    if path[0] == "inputs":
        if path[1] not in scope.inputs:
            raise ExprError(f"no input {path[1]!r}")
        value = scope.inputs[path[1]]
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if value is None or isinstance(value, str | float | bool | SecretRef):
            return value
        return str(value)
    step = scope.steps.get(path[1])
    if step is None:
        raise ExprError(f"no earlier step {path[1]!r}")
    if path[2] == "status":
        return step[0]
    # An output the step did not write reads as null: "did it say so" is a fair question.
    return step[1].get(path[3])


def _number(value: Value) -> float | None:
    if isinstance(value, bool) or value is None or isinstance(value, SecretRef):
        return None
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except ValueError:
        return None


def truthy(value: Value) -> bool:
    if isinstance(value, SecretRef):
        raise ExprError("a secret input has no truth value here")
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0")
    return bool(value)


def evaluate(node: Node, scope: Scope) -> Value:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Ref):
        return _lookup(node.path, scope)
    if isinstance(node, Not):
        return not truthy(evaluate(node.operand, scope))
    if node.op == "&&":
        return truthy(evaluate(node.left, scope)) and truthy(evaluate(node.right, scope))
    if node.op == "||":
        return truthy(evaluate(node.left, scope)) or truthy(evaluate(node.right, scope))
    left, right = evaluate(node.left, scope), evaluate(node.right, scope)
    if isinstance(left, SecretRef) or isinstance(right, SecretRef):
        raise ExprError("a secret input may not be compared")
    a, b = _number(left), _number(right)
    if node.op in ("==", "!="):
        same = a == b if a is not None and b is not None else as_text(left) == as_text(right)
        return same if node.op == "==" else not same
    if a is None or b is None:
        raise ExprError(f"{node.op} compares numbers")
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[node.op]


def as_text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, SecretRef):
        return value.expression()
    return value


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


def template_expressions(text: str) -> list[Node]:
    """The expressions of a template, parsed (ExprError on the first malformed one)."""
    return [parse(m.group(1)) for m in _TEMPLATE.finditer(text)]


def render(text: str, scope: Scope) -> str:
    """``text`` with each ``${{ expr }}`` replaced by its value as text. A value is put in
    as it is and never read again as a template."""
    return _TEMPLATE.sub(lambda m: as_text(evaluate(parse(m.group(1)), scope)), text)
