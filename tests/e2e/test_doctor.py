"""``tether-delegate doctor`` against a real manager: one line per check, ok/warn/fail, exit
1 on a failure; a wrong CA or an unknown token fails its check and names the fix."""

from __future__ import annotations

import email.utils
from pathlib import Path

from delegate.doctor import Seen, check_clock
from shared.tls import ensure_manager_certificates
from tests.e2e.harness import BIN, Cluster

CHECKS = [
    "dns",
    "proxy",
    "tls",
    "clock",
    "token",
    "secret-libs",
    "secret-managers",
    "isolation",
    "spool",
]


async def _doctor(
    cluster: Cluster, tmp_path: Path, token: str, *extra: str
) -> tuple[int, dict[str, tuple[str, str]], str]:
    res = await cluster.run(
        str(BIN / "tether-delegate"),
        "doctor",
        "--manager-url",
        cluster.url,
        "--data-dir",
        str(tmp_path / "delegate"),
        *extra,
        env={"TETHER_TOKEN": token, "HTTPS_PROXY": "", "https_proxy": ""},
    )
    assert "Traceback" not in res.stderr
    lines = res.stdout.strip().splitlines()
    checks = {}
    for line in lines[:-1]:
        status, name, detail = line.split(None, 2)
        checks[name] = (status, detail)
    assert list(checks) == CHECKS, res.stdout
    assert token not in res.stdout
    return res.code, checks, lines[-1]


async def test_doctor_passes_against_a_reachable_manager(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_manager()
    made = await cluster.run(
        str(BIN / "tether-manager"),
        "token",
        "create",
        "doc",
        "--selector",
        "linux",
        "--data-dir",
        str(cluster.data_dir),
    )
    assert made.code == 0, made.stderr
    token = made.last_line
    code, checks, summary = await _doctor(
        cluster, tmp_path, token, "--ca-file", str(cluster.ca_file), "--shared-user"
    )
    assert code == 0, checks
    assert {name for name, (status, _) in checks.items() if status == "fail"} == set()
    assert checks["tls"][0] == "ok"
    assert "TLSv1.3" in checks["tls"][1]
    assert f"verified against {cluster.ca_file} (--ca-file)" in checks["tls"][1]
    assert checks["clock"][0] == "ok"
    assert checks["token"] == ("ok", checks["token"][1])
    assert "'doc'" in checks["token"][1]
    assert "selectors linux" in checks["token"][1]
    # Tasks as the delegate's own user: said, as a warning.
    assert checks["isolation"][0] == "warn"
    assert "--shared-user" in checks["isolation"][1]
    assert checks["spool"][0] == "ok"
    assert summary == "9 checks: 0 failed, 1 warnings"

    # An unknown token fails its check, with the manager's reason.
    code, checks, summary = await _doctor(
        cluster, tmp_path, "tdt_unknown", "--ca-file", str(cluster.ca_file), "--shared-user"
    )
    assert code == 1
    assert checks["token"][0] == "fail"
    assert "not known to this manager" in checks["token"][1]
    assert summary.endswith("(token)")


async def test_doctor_fails_on_a_wrong_ca(cluster: Cluster, tmp_path: Path) -> None:
    await cluster.start_manager()
    other = tmp_path / "other"
    # Another manager's data dir: a CA the running manager's certificate does not chain to.
    wrong = ensure_manager_certificates(other, ["localhost"]).ca_cert
    code, checks, summary = await _doctor(
        cluster, tmp_path, "tdt_x", "--ca-file", str(wrong), "--shared-user"
    )
    assert code == 1
    status, detail = checks["tls"]
    assert status == "fail"
    assert f"not trusted by {wrong} (--ca-file)" in detail
    assert "check --ca-file" in detail
    # What needs the manager is not judged without it.
    assert checks["clock"][0] == checks["token"][0] == "warn"
    assert summary.startswith("9 checks: 1 failed")


def _seen(skew: float) -> tuple[Seen, float]:
    server = 1_800_000_000.0
    return Seen(date=email.utils.formatdate(server, usegmt=True), reached=True), server + skew


def test_clock_skew_is_judged_against_the_date_header() -> None:
    for skew, status in ((0.4, "ok"), (-2.0, "ok"), (20.0, "warn"), (-300.0, "fail")):
        seen, now = _seen(skew)
        check = check_clock(seen, now=(lambda at: lambda: at)(now))
        assert check.status == status, (skew, check)
    seen, now = _seen(-300.0)
    assert "behind the manager by 300 s" in check_clock(seen, now=lambda: now).detail
