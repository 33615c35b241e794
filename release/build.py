"""``make release``: build the wheel and sdist, then say what went into them.

Into the output directory: the wheel and sdist (``python -m build --no-isolation``, so the
build backend is the locked one), a CycloneDX SBOM of the locked runtime set, a SLSA v1
provenance statement (an in-toto Statement naming the source commit, the builder and the
sha256 of each artifact), and ``SHA256SUMS`` over all of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "provenance", "sha256"]

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
DEV_LOCK = ROOT / "requirements" / "dev.txt"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://tether.invalid/release/make-release/v1"
PROVENANCE = "provenance.intoto.json"
SUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _source_uri() -> str:
    """The repository as its origin names it; a clone with no remote names only itself."""
    try:
        origin = _git("config", "--get", "remote.origin.url")
    except subprocess.CalledProcessError:
        origin = ""
    return f"git+{origin}" if origin else f"git+file:{ROOT.name}"


def provenance(
    artifacts: list[Path], *, commit: str, dirty: bool, builder: str, started: str
) -> dict[str, Any]:
    """An in-toto Statement v1 with a SLSA provenance v1 predicate over ``artifacts``."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": p.name, "digest": {"sha256": sha256(p)}} for p in artifacts],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"command": "make release", "source": {"commit": commit}},
                "internalParameters": {"dirty": dirty, "python": sys.version.split()[0]},
                "resolvedDependencies": [
                    {"uri": _source_uri(), "digest": {"gitCommit": commit}},
                    *(
                        {"uri": f"file:requirements/{p.name}", "digest": {"sha256": sha256(p)}}
                        for p in (RUNTIME_LOCK, DEV_LOCK)
                    ),
                ],
            },
            "runDetails": {
                "builder": {"id": builder},
                "metadata": {"startedOn": started, "finishedOn": _now()},
            },
        },
    }


def _builder() -> str:
    # CI names itself through TETHER_BUILDER_ID; a hand-made build says who and where.
    named = os.environ.get("TETHER_BUILDER_ID")
    return named or f"local:{getpass.getuser()}@{socket.gethostname()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make release")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    started = _now()
    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    env = {**os.environ, "SOURCE_DATE_EPOCH": _git("log", "-1", "--format=%ct")}
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    built = sorted(p for p in out.iterdir() if p.suffix == ".whl" or p.name.endswith(".tar.gz"))
    version = built[0].name.split("-")[1]
    sbom = out / f"tether-{version}.cdx.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cyclonedx_py",
            "requirements",
            "--output-format",
            "JSON",
            "--output-file",
            str(sbom),
            "--output-reproducible",
            "--pyproject",
            str(ROOT / "pyproject.toml"),
            str(RUNTIME_LOCK),
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    artifacts = [*built, sbom]
    statement = provenance(
        artifacts, commit=commit, dirty=dirty, builder=_builder(), started=started
    )
    (out / PROVENANCE).write_text(json.dumps(statement, indent=2) + "\n")
    sums = [f"{sha256(p)}  {p.name}" for p in [*artifacts, out / PROVENANCE]]
    (out / SUMS).write_text("\n".join(sums) + "\n")
    for line in sums:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
