"""delegate.run.taskinputs.prepare, then execute(): what a task runs with, and what it ships."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from delegate.run.executor import ExecutionResult, execute
from delegate.run.logstream import LogStream
from delegate.run.taskinputs import InputError, TaskInputs, prepare
from delegate.secrets.resolver import SecretResolver
from shared.masking import MASK, Masker
from shared.protocol import LogLine, ShellPayload, TaskPayload
from shared.secretspec import ManagerSpec, SecretDelivery, SecretOpPayload
from tests.delegate.secret_helpers import DelegateKey, acquire, builtin, delegate_key

MASKED = MASK.decode()
# Characters that URL-encoding, JSON escaping and base64 each change.
SECRET = 's3cr3t "pa55"/w+rd\\x'
PEM = "line-one-alpha\nline-two-bravo\nline-three-charlie"


@pytest.fixture
def key() -> DelegateKey:
    return delegate_key()


@dataclass
class Prepared:
    inputs: TaskInputs
    task_masker: Masker
    process_masker: Masker


async def prepared(
    key: DelegateKey,
    payload: TaskPayload,
    secrets: list[SecretDelivery],
    *,
    unavailable: dict[str, str] | None = None,
) -> Prepared:
    task_masker, process_masker = Masker(), Masker()
    acq = acquire(payload, secrets, unavailable=unavailable)
    inputs = await prepare(
        acq,
        secret_env={},
        resolver=SecretResolver(key.private),
        maskers=(task_masker, process_masker),
    )
    return Prepared(inputs, task_masker, process_masker)


async def run(p: Prepared, work_root: Path) -> tuple[ExecutionResult, list[LogLine]]:
    lines: list[LogLine] = []

    async def sink(line: LogLine) -> None:
        lines.append(line)

    result = await asyncio.wait_for(
        execute(
            p.inputs.spec,
            secret_env=p.inputs.env,
            secret_files=p.inputs.files,
            log=LogStream(p.task_masker, sink, flush_after=0.05),
            cancel=asyncio.Event(),
            kill_grace=0.2,
            work_root=work_root,
        ),
        30,
    )
    return result, lines


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- masking -------------------------------------------------------------------------------


async def test_secret_printed_in_every_encoding_is_never_shipped(
    key: DelegateKey, tmp_path: Path
) -> None:
    py = shlex.quote(sys.executable)
    script = f"""
printf '%s\\n' "$V"
printf '%s' "$V" | base64 -w0; echo
{py} -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$V"
{py} -c 'import sys, json; print(json.dumps(sys.argv[1]))' "$V"
for ((i = 0; i < ${{#V}}; i++)); do printf '%s' "${{V:i:1}}"; done; echo
printf '%s\\n' "$PEM" >&2
echo '${{configFile.getAsBase64("cert")}}'
cat <<'EOF'
inline ${{secrets.getValue("db-pass")}} end
EOF
echo done-marker
"""
    payload = ShellPayload(
        script=script,
        env={"V": '${secrets.getValue("db-pass")}', "PEM": '${configFile.getAsString("cert")}'},
    )
    p = await prepared(
        key,
        payload,
        [
            builtin(key, "db-pass", SECRET.encode()),
            builtin(key, "cert", PEM.encode(), type_="file"),
        ],
    )

    result, lines = await run(p, tmp_path)

    assert result.status == "succeeded", result.error
    shipped = "\n".join(line.text for line in lines)
    forms = [
        SECRET,
        b64(SECRET),
        quote(SECRET, safe=""),
        json.dumps(SECRET)[1:-1],
        b64(PEM),
        *PEM.splitlines(),
    ]
    for form in forms:
        assert form not in shipped
    assert "done-marker" in shipped
    assert shipped.count(MASKED) >= 8


async def test_values_join_the_process_masker_too(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("db-pass")}')

    p = await prepared(key, payload, [builtin(key, "db-pass", SECRET.encode())])

    assert p.process_masker.mask_text(f"log {SECRET}") == f"log {MASKED}"
    assert p.task_masker.mask_text(f"log {SECRET}") == f"log {MASKED}"


async def test_rendered_base64_is_masked_whole_with_its_padding(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${configFile.getAsBase64("f")}')

    p = await prepared(key, payload, [builtin(key, "f", b"abcd-secret", type_="file")])

    assert b64("abcd-secret") == "YWJjZC1zZWNyZXQ="
    assert p.task_masker.mask_text("x YWJjZC1zZWNyZXQ= y") == f"x {MASKED} y"


async def test_value_too_short_to_mask_is_listed(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("pin")}')

    p = await prepared(key, payload, [builtin(key, "pin", b"123")])

    assert p.task_masker.skipped == ["a value of 3 bytes"]


# --- credential secrets ----------------------------------------------------------------------


PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----"
)
SSH = {
    "key": PRIVATE_KEY,
    "user": "svc-runner",
    "passphrase": "phrase-123",
}


def dump_env_script(dump: Path) -> str:
    return f"env | grep '^TETHER_SSH_\\|^TETHER_WINRM_' > {shlex.quote(str(dump))}"


def read_env(dump: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in dump.read_text().splitlines())


async def test_ssh_key_is_a_private_file_gone_after_the_task(
    key: DelegateKey, tmp_path: Path
) -> None:
    copy, dump = tmp_path / "copy", tmp_path / "env"
    script = f"""
{dump_env_script(dump)}
f="$TETHER_SSH_DEPLOY_KEY_KEY_FILE"
cp "$f" {shlex.quote(str(copy))}
echo "MODE=$(stat -c %a "$f")" >> "$TETHER_OUTPUT"
"""
    payload = ShellPayload(script=script, credential_secrets=["deploy-key"])
    delivery = builtin(key, "deploy-key", json.dumps(SSH).encode(), type_="ssh_key")
    p = await prepared(key, payload, [delivery])

    result, _ = await run(p, tmp_path / "work")

    assert result.status == "succeeded", result.error
    assert result.outputs == {"MODE": "600"}
    # OpenSSH wants the key's last line ended.
    assert copy.read_text() == SSH["key"] + "\n"
    env = read_env(dump)
    assert env["TETHER_SSH_DEPLOY_KEY_USER"] == "svc-runner"
    assert env["TETHER_SSH_DEPLOY_KEY_PASSPHRASE"] == "phrase-123"
    key_file = Path(env["TETHER_SSH_DEPLOY_KEY_KEY_FILE"])
    assert key_file.name == "TETHER_SSH_DEPLOY_KEY_KEY_FILE"
    assert not key_file.exists()
    assert list((tmp_path / "work").iterdir()) == []


async def test_ssh_key_without_user_or_passphrase_sets_only_the_file(
    key: DelegateKey, tmp_path: Path
) -> None:
    dump = tmp_path / "env"
    payload = ShellPayload(script=dump_env_script(dump), credential_secrets=["ops/jump.host"])
    value = json.dumps({"key": SSH["key"] + "\n", "passphrase": None}).encode()
    p = await prepared(key, payload, [builtin(key, "ops/jump.host", value, type_="ssh_key")])

    result, _ = await run(p, tmp_path / "work")

    assert result.status == "succeeded", result.error
    assert list(read_env(dump)) == ["TETHER_SSH_OPS_JUMP_HOST_KEY_FILE"]


async def test_key_file_is_removed_when_the_task_fails_to_start(
    key: DelegateKey, tmp_path: Path
) -> None:
    payload = ShellPayload(
        script="true", credential_secrets=["deploy-key"], working_dir="/nonexistent/tether"
    )
    delivery = builtin(key, "deploy-key", json.dumps(SSH).encode(), type_="ssh_key")
    p = await prepared(key, payload, [delivery])

    result, _ = await run(p, tmp_path / "work")

    assert result.status == "failed"
    assert list((tmp_path / "work").iterdir()) == []


async def test_winrm_fields_are_variables(key: DelegateKey, tmp_path: Path) -> None:
    dump = tmp_path / "env"
    payload = ShellPayload(script=dump_env_script(dump), credential_secrets=["win.host"])
    value = json.dumps({"user": "Administrator", "password": "winrm-pa55", "domain": "CORP"})
    p = await prepared(key, payload, [builtin(key, "win.host", value.encode(), type_="winrm")])

    result, _ = await run(p, tmp_path / "work")

    assert result.status == "succeeded", result.error
    assert read_env(dump) == {
        "TETHER_WINRM_WIN_HOST_USER": "Administrator",
        "TETHER_WINRM_WIN_HOST_PASSWORD": "winrm-pa55",
        "TETHER_WINRM_WIN_HOST_DOMAIN": "CORP",
    }
    assert p.inputs.files == {}


async def test_credential_secret_of_another_type_fails_the_task(key: DelegateKey) -> None:
    payload = ShellPayload(script="true", credential_secrets=["db-pass"])

    with pytest.raises(InputError) as caught:
        await prepared(key, payload, [builtin(key, "db-pass", SECRET.encode())])

    assert str(caught.value) == (
        'credential_secrets: secret "db-pass" is a text secret; only ssh_key and winrm '
        "secrets map to variables and files"
    )


async def test_two_credential_names_with_the_same_variables_fail(key: DelegateKey) -> None:
    payload = ShellPayload(script="true", credential_secrets=["a-b", "a.b"])
    value = json.dumps(SSH).encode()

    secrets = [builtin(key, name, value, type_="ssh_key") for name in ("a-b", "a.b")]

    with pytest.raises(InputError) as caught:
        await prepared(key, payload, secrets)

    assert str(caught.value) == (
        'credential_secrets: secrets "a-b" and "a.b" both map to the variables of A_B'
    )


# --- failures before anything runs -----------------------------------------------------------


async def test_unavailable_secret_fails_the_task_by_name(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("db-pass")}')

    with pytest.raises(InputError) as caught:
        await prepared(key, payload, [], unavailable={"db-pass": "no such secret"})

    assert str(caught.value) == 'secret "db-pass": no such secret'


async def test_secret_the_manager_did_not_send_fails_the_task(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("db-pass")}')

    with pytest.raises(InputError, match=r'^secret "db-pass": not delivered by the manager$'):
        await prepared(key, payload, [])


async def test_binary_value_as_text_fails_the_task(key: DelegateKey) -> None:
    payload = ShellPayload(script='echo ${secrets.getValue("blob")}')

    with pytest.raises(InputError, match=r'^script: secret "blob" is not UTF-8 text'):
        await prepared(key, payload, [builtin(key, "blob", b"\xff\xfe-binary", type_="file")])


async def test_secret_op_fails_on_credentials_the_manager_could_not_send(
    key: DelegateKey,
) -> None:
    manager = ManagerSpec(id="sm_t", name="transit", kind="vault_transit")
    payload = SecretOpPayload(op="check", manager=manager)

    with pytest.raises(InputError) as caught:
        await prepared(key, payload, [], unavailable={"transit": "no builtin secret 'vault'"})

    assert str(caught.value) == "secret manager \"transit\": no builtin secret 'vault'"
