"""The vendor libraries are extras: the cores import none of them, and a missing one gives a
message naming the extra to install. Each check runs in a fresh interpreter, where a
sys.modules entry of None makes the import fail as on a host without the library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

VENDORS = ("boto3", "botocore", "hvac", "google", "azure", "saml2", "scipy")


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_cores_import_no_vendor_library() -> None:
    loaded = json.loads(
        _python(
            "import sys, json\n"
            "import manager.cli, manager.server.app, manager.client.cli.main\n"
            "import delegate.cli, delegate.agent, delegate.secrets.resolver\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {VENDORS!r})))"
        )
    )
    assert loaded == []


@pytest.mark.parametrize(
    ("kind", "blocked", "extra"),
    [
        ("aws_kms", "boto3", "aws"),
        ("vault_kv", "hvac", "vault"),
        ("gcp_kms", "google", "gcp"),
        ("azure_key_vault", "azure", "azure"),
    ],
)
def test_a_missing_vendor_library_names_its_extra(kind: str, blocked: str, extra: str) -> None:
    out = _python(
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from delegate.secrets.base import ProviderConfig, SecretError\n"
        "from delegate.secrets.registry import make_provider\n"
        "try:\n"
        f"    make_provider(ProviderConfig(kind={kind!r}))\n"
        "except SecretError as exc:\n"
        "    print(exc)\n"
    )
    assert f"pip install 'tether[{extra}]' (or 'tether[all]')" in out
    assert out.startswith(f"{kind}: ")
    assert "is not installed on this delegate" in out


def test_the_containers_and_the_demo_install_every_extra() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    # The runtime lock the containers install is made from the [all] extra.
    assert "--extra all --constraint $(LOCK) -o $(RUNTIME_LOCK)" in makefile
    runtime = (root / "requirements" / "runtime.txt").read_text()
    for pin in (
        "boto3==",
        "hvac==",
        "google-cloud-kms==",
        "azure-identity==",
        "pysaml2==",
        "scipy==",
    ):
        assert pin in runtime
    for dockerfile in ("Dockerfile.manager", "Dockerfile.delegate"):
        text = (root / "deploy" / "docker" / dockerfile).read_text()
        assert "-r requirements/runtime.txt" in text
    # make demo runs in the dev environment, which takes tether[all].
    assert '"tether[all]"' in (root / "pyproject.toml").read_text()
