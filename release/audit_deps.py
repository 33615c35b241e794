"""``make audit-deps``: known vulnerabilities in the locked set, through pip-audit.

Exit 1 when a locked package has a known vulnerability that a newer version fixes (raise
the pin: ``make lock UPGRADE=1``). A vulnerability with no fix yet is printed, not failed:
there is nothing to move to. When the advisory service cannot be reached, or a package
could not be looked up, the run says "not checked" and exits 0: an unreachable service is
never reported as a pass, and never blocks CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Verdict", "judge", "main"]

_SHOWN = 5  # not-checked packages listed by name; the rest are counted


@dataclass(frozen=True)
class Verdict:
    fixable: list[str]
    unfixed: list[str]
    unchecked: list[str]
    checked: int

    @property
    def exit_code(self) -> int:
        return 1 if self.fixable else 0


def judge(report: dict[str, Any]) -> Verdict:
    """Sort pip-audit's JSON report into what fails the run and what is only reported."""
    fixable: list[str] = []
    unfixed: list[str] = []
    unchecked: list[str] = []
    checked = 0
    for dep in report.get("dependencies", []):
        name = f"{dep['name']}=={dep['version']}" if "version" in dep else dep["name"]
        if "skip_reason" in dep:
            unchecked.append(f"{name}: {dep['skip_reason']}")
            continue
        checked += 1
        for vuln in dep.get("vulns", []):
            fixes = vuln.get("fix_versions") or []
            line = f"{name}: {vuln['id']}"
            if fixes:
                fixable.append(f"{line} (fixed in {', '.join(fixes)})")
            else:
                unfixed.append(f"{line} (no fix released)")
    return Verdict(fixable, unfixed, unchecked, checked)


def _run_pip_audit(lock: Path) -> tuple[dict[str, Any] | None, str]:
    # --disable-pip: the lock is complete and hashed, so nothing is resolved or installed.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "--requirement",
            str(lock),
            "--require-hashes",
            "--disable-pip",
            "--vulnerability-service",
            "pypi",
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        # No report at all: pip-audit stopped before judging (service unreachable, ...).
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"pip-audit exited {proc.returncode}"
    return (report if isinstance(report, dict) else None), ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    lock = Path(args[0] if args else "requirements/dev.txt")
    try:
        report, error = _run_pip_audit(lock)
    except subprocess.TimeoutExpired:
        report, error = None, "pip-audit timed out"
    if report is None:
        print(f"audit-deps: NOT CHECKED ({error}); the locked set was not audited")
        return 0
    verdict = judge(report)
    for line in verdict.fixable:
        print(f"audit-deps: VULNERABLE, fix available: {line}")
    for line in verdict.unfixed:
        print(f"audit-deps: vulnerable, no fix yet: {line}")
    for line in verdict.unchecked[:_SHOWN]:
        print(f"audit-deps: NOT CHECKED: {line}")
    if len(verdict.unchecked) > _SHOWN:
        print(f"audit-deps: NOT CHECKED: ... and {len(verdict.unchecked) - _SHOWN} more")
    if verdict.fixable:
        status = "FAILED"
    elif not verdict.checked:
        status = "NOT CHECKED (the advisory service answered for no package)"
    else:
        status = "no known fixable vulnerability"
    print(
        f"audit-deps: {status}; {verdict.checked} packages checked,"
        f" {len(verdict.unchecked)} not checked"
    )
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
