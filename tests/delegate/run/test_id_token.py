"""The delegate's part of workload identity: the credential opens only for its attempt, and
a shell task finds the request URL and CA beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from delegate.run.id_token import request_secret_env, with_request_env
from shared.protocol import AcquireResponse, HttpPayload, ShellPayload, TaskSpec
from shared.sealing import SealError, generate_keypair, public_key_b64, seal
from shared.workload_identity import REQUEST_CA, REQUEST_TOKEN, REQUEST_URL, request_context


def _acq(public: str, attempt: int, sealed_for: int) -> AcquireResponse:
    sealed = seal(public, b"tir1.tsk_1.2.mac", context=request_context("tsk_1", sealed_for))
    spec = TaskSpec(id="tsk_1", payload=ShellPayload(script="true"), timeout_s=5)
    return AcquireResponse(task=spec, attempt=attempt, id_token_request=sealed)


def test_the_credential_opens_for_its_own_attempt_only() -> None:
    private, raw = generate_keypair()
    public = public_key_b64(raw)
    assert request_secret_env(_acq(public, 2, 2), private) == {REQUEST_TOKEN: "tir1.tsk_1.2.mac"}
    with pytest.raises(SealError):
        request_secret_env(_acq(public, 3, 2), private)
    spec = TaskSpec(id="tsk_1", payload=ShellPayload(script="true"), timeout_s=5)
    assert request_secret_env(AcquireResponse(task=spec, attempt=1), private) == {}
    # Only a process has an environment: an HTTP task is given nothing.
    http = _acq(public, 2, 2).model_copy(
        update={"task": TaskSpec(id="tsk_1", payload=HttpPayload(url="https://x"), timeout_s=5)}
    )
    assert request_secret_env(http, private) == {}


def test_a_shell_task_gets_the_url_and_ca_and_keeps_its_own_env(tmp_path: Path) -> None:
    spec = TaskSpec(id="t", payload=ShellPayload(script="true", env={"A": "1"}), timeout_s=5)
    out = with_request_env(spec, "https://m.example:8443/", tmp_path / "ca.pem")
    assert isinstance(out.payload, ShellPayload)
    assert out.payload.env == {
        REQUEST_URL: "https://m.example:8443/api/v1/id-token",
        REQUEST_CA: str(tmp_path / "ca.pem"),
        "A": "1",
    }
    http = TaskSpec(id="t", payload=HttpPayload(url="https://x"), timeout_s=5)
    assert with_request_env(http, "https://m", None) == http
