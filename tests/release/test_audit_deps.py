"""``make audit-deps``: what fails the run, what is only reported, and an advisory service
out of reach reported as not checked, never as a pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from release.audit_deps import judge

ROOT = Path(__file__).resolve().parents[2]


def dep(name: str, *vulns: tuple[str, list[str]]) -> dict[str, object]:
    return {
        "name": name,
        "version": "1.0",
        "vulns": [{"id": v, "fix_versions": fixes, "aliases": []} for v, fixes in vulns],
    }


def test_a_vulnerability_with_a_fix_fails() -> None:
    verdict = judge({"dependencies": [dep("a"), dep("b", ("GHSA-1", ["1.1"]))]})
    assert verdict.exit_code == 1
    assert verdict.fixable == ["b==1.0: GHSA-1 (fixed in 1.1)"]
    assert verdict.checked == 2


def test_a_vulnerability_without_a_fix_is_reported_but_does_not_fail() -> None:
    verdict = judge({"dependencies": [dep("b", ("PYSEC-2", []))]})
    assert verdict.exit_code == 0
    assert verdict.unfixed == ["b==1.0: PYSEC-2 (no fix released)"]


def test_a_package_the_service_did_not_answer_for_is_not_checked() -> None:
    skipped = {"name": "c", "skip_reason": "Dependency not found on PyPI"}
    verdict = judge({"dependencies": [dep("a"), skipped]})
    assert verdict.exit_code == 0
    assert verdict.checked == 1
    assert verdict.unchecked == ["c: Dependency not found on PyPI"]


def test_an_unreachable_service_says_not_checked_and_exits_0(tmp_path: Path) -> None:
    # A proxy that refuses every connection: the service cannot be reached at all.
    env = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "XDG_CACHE_HOME": str(tmp_path),
    }
    res = subprocess.run(
        [sys.executable, "-m", "release.audit_deps", str(ROOT / "requirements" / "build.txt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "NOT CHECKED" in res.stdout
    assert "no known" not in res.stdout
