"""shared.task_secrets.render_payload: the delegate's substitution of secret expressions."""

from __future__ import annotations

import base64

import pytest

from shared.protocol import CapabilityPayload, HttpPayload, ShellPayload
from shared.task_secrets import RenderError, render_payload

VALUES = {
    "db-pass": b"pa55-w0rd",
    "team/tls.pem": b"-----BEGIN CERT-----\nMIIB\n-----END CERT-----\n",
    "blob": b"\xff\xfe\x00binary",
    "looks-like": b'${secrets.getValue("db-pass")}',
}


def resolve(name: str) -> bytes:
    return VALUES[name]


def test_get_value_is_inserted_in_the_script_and_env() -> None:
    payload = ShellPayload(
        script='psql "postgres://app:${secrets.getValue("db-pass")}@db/app"',
        env={"PW": "${secrets.getValue('db-pass')}", "PLAIN": "as is"},
    )

    rendered = render_payload(payload, resolve)

    assert rendered.script == 'psql "postgres://app:pa55-w0rd@db/app"'
    assert rendered.env == {"PW": "pa55-w0rd", "PLAIN": "as is"}


def test_get_as_string_inserts_a_files_text() -> None:
    payload = ShellPayload(script='cat <<EOF\n${configFile.getAsString("team/tls.pem")}EOF')

    rendered = render_payload(payload, resolve)

    assert rendered.script == "cat <<EOF\n-----BEGIN CERT-----\nMIIB\n-----END CERT-----\nEOF"


def test_get_as_base64_inserts_standard_base64_of_any_bytes() -> None:
    payload = ShellPayload(script='echo ${configFile.getAsBase64("blob")}')

    rendered = render_payload(payload, resolve)

    assert rendered.script == f"echo {base64.b64encode(VALUES['blob']).decode()}"
    assert rendered.script == "echo //4AYmluYXJ5"


def test_escaped_expression_stays_literal() -> None:
    payload = ShellPayload(script='echo "$${secrets.getValue("db-pass")}" $$ ${HOME}')

    rendered = render_payload(payload, resolve)

    assert rendered.script == 'echo "${secrets.getValue("db-pass")}" $$ ${HOME}'


def test_inserted_value_is_not_expanded_again() -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("looks-like")}')

    rendered = render_payload(payload, resolve)

    assert rendered.script == 'echo ${secrets.getValue("db-pass")}'


def test_http_url_header_values_and_body_are_rendered() -> None:
    payload = HttpPayload(
        method="POST",
        url='https://api.example.com/?key=${secrets.getValue("db-pass")}',
        headers={"Authorization": 'Bearer ${secrets.getValue("db-pass")}'},
        body='{"cert": "${configFile.getAsBase64("team/tls.pem")}"}',
    )

    rendered = render_payload(payload, resolve)

    assert rendered.url == "https://api.example.com/?key=pa55-w0rd"
    assert rendered.headers == {"Authorization": "Bearer pa55-w0rd"}
    cert = base64.b64encode(VALUES["team/tls.pem"]).decode()
    assert rendered.body == f'{{"cert": "{cert}"}}'


def test_the_original_payload_is_left_alone() -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("db-pass")}')

    render_payload(payload, resolve)

    assert payload.script == 'echo ${secrets.getValue("db-pass")}'


def test_capability_payload_is_returned_as_it_is() -> None:
    payload = CapabilityPayload(target="db.internal:5432")

    assert render_payload(payload, resolve) is payload


def test_value_that_is_not_utf8_is_refused_with_a_pointer_to_base64() -> None:
    payload = ShellPayload(script="true", env={"KEY": '${secrets.getValue("blob")}'})

    with pytest.raises(RenderError) as caught:
        render_payload(payload, resolve)

    assert str(caught.value) == (
        'env.KEY: secret "blob" is not UTF-8 text; insert it with '
        '${configFile.getAsBase64("blob")} and decode it where it is used'
    )


def test_unknown_name_is_refused_naming_the_field() -> None:
    payload = HttpPayload(url='https://x.example/${secrets.getValue("nope")}')

    with pytest.raises(RenderError, match=r'^url: secret "nope" is not known to the task$'):
        render_payload(payload, resolve)


def test_malformed_expression_is_refused_before_any_value_is_asked_for() -> None:
    asked: list[str] = []

    def tracking(name: str) -> bytes:
        asked.append(name)
        return resolve(name)

    payload = ShellPayload(script='echo ${secrets.getValue("db-pass")} ${secrets.getValu("x")}')

    with pytest.raises(RenderError, match=r"^script: unknown function 'secrets.getValu'"):
        render_payload(payload, tracking)
    assert asked == []
