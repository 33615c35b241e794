from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.expressions import (
    MAX_NAME_LENGTH,
    ExpressionError,
    Kind,
    SecretExpr,
    find_expressions,
    referenced_names,
    render,
)

FORMS: dict[Kind, str] = {
    "value": "secrets.getValue",
    "file_string": "configFile.getAsString",
    "file_base64": "configFile.getAsBase64",
}


def _tag(expr: SecretExpr) -> str:
    return f"<{expr.kind}:{expr.name}>"


def _never(expr: SecretExpr) -> str:
    raise AssertionError(f"resolve called for {expr}")


# --- finding -------------------------------------------------------------------------------


def test_each_form_is_found_with_its_kind_and_span() -> None:
    text = (
        'A=${secrets.getValue("db")} B=${configFile.getAsString("cfg.yaml")} '
        "C=${configFile.getAsBase64('tls/key.pem')}"
    )
    exprs = find_expressions(text)
    assert [(e.kind, e.name) for e in exprs] == [
        ("value", "db"),
        ("file_string", "cfg.yaml"),
        ("file_base64", "tls/key.pem"),
    ]
    assert [text[e.start : e.end] for e in exprs] == [
        '${secrets.getValue("db")}',
        '${configFile.getAsString("cfg.yaml")}',
        "${configFile.getAsBase64('tls/key.pem')}",
    ]


def test_whitespace_inside_the_parentheses_is_allowed() -> None:
    [expr] = find_expressions('${secrets.getValue( \t"db"  )}')
    assert expr.name == "db"


def test_shell_expansions_are_left_alone() -> None:
    text = (
        'echo ${HOME} ${var:-x} ${#arr[@]} $$ ${secrets} ${secretsX.y} ${ secrets.getValue("a") }'
    )
    assert find_expressions(text) == []
    assert render(text, _never) == text


def test_render_replaces_expressions_and_keeps_the_rest() -> None:
    text = 'curl -H "Authorization: ${secrets.getValue("token")}" ${URL}'
    assert render(text, _tag) == 'curl -H "Authorization: <value:token>" ${URL}'


def test_resolved_values_are_not_expanded_again() -> None:
    text = '${secrets.getValue("a")}'
    assert render(text, lambda _e: '${secrets.getValue("b")}') == '${secrets.getValue("b")}'


def test_escaped_expression_renders_literally() -> None:
    text = 'echo $${secrets.getValue("db")} and ${secrets.getValue("db")}'
    exprs = find_expressions(text)
    assert [e.start for e in exprs] == [text.rindex("${")]
    assert render(text, _tag) == 'echo ${secrets.getValue("db")} and <value:db>'


def test_longer_dollar_run_loses_one_dollar() -> None:
    assert render('$$${configFile.getAsString("x")}', _never) == '$${configFile.getAsString("x")}'


def test_escape_does_not_need_a_valid_expression() -> None:
    assert render("$${secrets.whatever", _never) == "${secrets.whatever"


def test_referenced_names_collects_across_texts() -> None:
    texts = ['${secrets.getValue("a")} ${secrets.getValue("a")}', "${configFile.getAsBase64('a')}"]
    assert referenced_names(texts) == {("value", "a"), ("file_base64", "a")}


@pytest.mark.parametrize(
    "name", ["a", "DB_PASS", "account.api-key", "org/team/tls.pem", "_x", "9", "a" * 128]
)
def test_valid_names(name: str) -> None:
    [expr] = find_expressions(f'${{secrets.getValue("{name}")}}')
    assert expr.name == name


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ('${secrets.getvalue("a")}', "unknown function 'secrets.getvalue'", 10),
        ('${configFile.getValue("a")}', "unknown function", 13),
        ("${secrets.", "expected a function name", 10),
        ('${secrets.getValue"a")}', "expected '('", 18),
        ("${secrets.getValue(a)}", "expected a quoted secret name", 19),
        ('${secrets.getValue("a)}', "not allowed", 21),
        ('${secrets.getValue("a', "unterminated", 19),
        ('${secrets.getValue("a\n")}', "unterminated", 19),
        ("${secrets.getValue(\"a')}", "other quote", 21),
        ('${secrets.getValue("")}', "empty secret name", 20),
        ('${secrets.getValue("a b")}', "not allowed", 21),
        ('${secrets.getValue("a//b")}', "segments", 20),
        ('${secrets.getValue("/a")}', "segments", 20),
        ('${secrets.getValue(".a")}', "segments", 20),
        ('${secrets.getValue("a"}', "expected ')'", 22),
        ('${secrets.getValue("a")', "expected '}'", 23),
        ('${secrets.getValue("a") }', "expected '}'", 23),
    ],
)
def test_malformed_expression_reports_reason_and_position(
    text: str, reason: str, position: int
) -> None:
    with pytest.raises(ExpressionError, match=re.escape(reason)) as caught:
        find_expressions(text)
    assert caught.value.position == position


def test_too_long_name_is_refused() -> None:
    with pytest.raises(ExpressionError, match=f"longer than {MAX_NAME_LENGTH}"):
        find_expressions(f'${{secrets.getValue("{"a" * (MAX_NAME_LENGTH + 1)}")}}')


def test_error_gives_line_and_column() -> None:
    text = 'echo ok\n  x=${secrets.getValue("a)}\n'
    with pytest.raises(ExpressionError) as caught:
        find_expressions(text)
    # The ")" where the closing quote should be: line 2, column 26.
    assert (caught.value.line, caught.value.column) == (2, 26)
    assert "line 2, column 26" in str(caught.value)


def test_render_checks_everything_before_resolving_anything() -> None:
    text = '${secrets.getValue("a")} ${secrets.getValue(b)}'
    with pytest.raises(ExpressionError):
        render(text, _never)


# --- properties ----------------------------------------------------------------------------

_FRAGMENTS = [
    "$",
    "$$",
    "{",
    "}",
    "(",
    ")",
    '"',
    "'",
    " ",
    "\n",
    ".",
    "/",
    "${",
    "${secrets.",
    "${configFile.",
    "getValue",
    "getAsString",
    "getAsBase64",
    "name",
    "${HOME}",
]
noisy_text = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=5))).map("".join)

_SEGMENT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,15}", fullmatch=True)
names = (
    st.lists(_SEGMENT, min_size=1, max_size=4)
    .map("/".join)
    .filter(lambda n: len(n) <= MAX_NAME_LENGTH)
)
kinds = st.sampled_from(list(FORMS))
plain_text = st.text(max_size=30).filter(
    lambda t: "${secrets." not in t and "${configFile." not in t and not t.endswith("$")
)


@given(st.one_of(st.text(), noisy_text))
def test_arbitrary_text_raises_nothing_but_expression_error(text: str) -> None:
    try:
        exprs = find_expressions(text)
        rendered = render(text, _tag)
    except ExpressionError as exc:
        error: ExpressionError | None = exc
    else:
        error = None
    if error is not None:
        assert 0 <= error.position <= len(text)
        return
    for expr in exprs:
        assert text[expr.start : expr.end].startswith("${")
        assert text[expr.end - 1] == "}"
    assert isinstance(rendered, str)


@given(st.text())
def test_text_without_expression_prefixes_renders_unchanged(text: str) -> None:
    if "${secrets." in text or "${configFile." in text:
        return
    assert find_expressions(text) == []
    assert render(text, _never) == text


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, list[tuple[Kind, str, int, int]], str]:
    """Plain text with valid expressions between: the text, the expected finds, and the
    expected rendering with ``_tag``."""
    text = draw(plain_text)
    rendered = text
    expected: list[tuple[Kind, str, int, int]] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(kinds)
        name = draw(names)
        quote = draw(st.sampled_from(["'", '"']))
        left, right = draw(st.sampled_from(["", " ", "\t "])), draw(st.sampled_from(["", " "]))
        expression = f"${{{FORMS[kind]}({left}{quote}{name}{quote}{right})}}"
        expected.append((kind, name, len(text), len(text) + len(expression)))
        after = draw(plain_text)
        text += expression + after
        rendered += f"<{kind}:{name}>" + after
    return text, expected, rendered


@given(documents())
def test_generated_expressions_are_found_exactly(
    document: tuple[str, list[tuple[Kind, str, int, int]], str],
) -> None:
    text, expected, rendered = document
    found = [(e.kind, e.name, e.start, e.end) for e in find_expressions(text)]
    assert found == expected
    assert render(text, _tag) == rendered
    assert referenced_names([text]) == {(kind, name) for kind, name, _s, _e in expected}
