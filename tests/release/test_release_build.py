"""``make release``, built once into a temporary directory: the SBOM lists every locked
runtime package at its locked version, and the provenance and SHA256SUMS match the files."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("dist")
        _build(out)
        return out
    # Under xdist, several workers get tests of this module: two builds at once in one
    # source tree (its build/ and egg-info) break each other, so one builds, under a lock,
    # into the run's shared directory, and the others use that.
    shared = tmp_path_factory.getbasetemp().parent
    out = shared / "release-dist"
    with (shared / "release-dist.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "SHA256SUMS").exists():
            _build(out)
    return out


def _build(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "release.build", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )


def only(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_release_holds_wheel_sdist_sbom_provenance_and_sums(dist: Path) -> None:
    names = sorted(p.name for p in dist.iterdir())
    assert [n for n in names if n.endswith(".whl")]
    assert [n for n in names if n.endswith(".tar.gz")]
    assert {"provenance.intoto.json", "SHA256SUMS"} <= set(names)
    assert len(list(dist.glob("*.cdx.json"))) == 1


def test_the_sbom_lists_every_locked_runtime_package_at_its_version(dist: Path) -> None:
    locked = {
        (canonical(m.group(1)), m.group(2))
        for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines()
        if (m := PIN.match(line))
    }
    assert len(locked) > 20
    sbom: dict[str, Any] = json.loads(only(dist, "*.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    listed = {(canonical(c["name"]), c.get("version")) for c in sbom["components"]}
    assert locked - listed == set()


def test_the_provenance_names_the_commit_and_the_digest_of_each_artifact(dist: Path) -> None:
    statement: dict[str, Any] = json.loads((dist / "provenance.intoto.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    artifacts = {p.name for p in dist.iterdir()} - {"provenance.intoto.json", "SHA256SUMS"}
    assert set(subjects) == artifacts
    for name, digest in subjects.items():
        assert sha256(dist / name) == digest, name
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    build = statement["predicate"]["buildDefinition"]
    assert {"gitCommit": head} in [d["digest"] for d in build["resolvedDependencies"]]
    assert statement["predicate"]["runDetails"]["builder"]["id"]


def test_sha256sums_covers_every_file_and_matches(dist: Path) -> None:
    lines = (dist / "SHA256SUMS").read_text().splitlines()
    sums: dict[str, str] = {}
    for line in lines:
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == {p.name for p in dist.iterdir()} - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert sha256(dist / name) == digest, name


def test_the_wheel_and_sdist_carry_the_license_classifiers_and_extras(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        names = wheel.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(wheel.read(meta_name).decode())
        (license_name,) = [n for n in names if n.endswith("/licenses/LICENSE")]
        assert wheel.read(license_name) == (ROOT / "LICENSE").read_bytes()
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Programming Language :: Python :: 3.11" in (meta.get_all("Classifier") or [])
    assert {"aws", "gcp", "azure", "vault", "saml", "verify", "all"} <= set(
        meta.get_all("Provides-Extra") or []
    )
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        assert any(m.name.endswith("/LICENSE") for m in sdist.getmembers())
