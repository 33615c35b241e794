"""The console's third-party JavaScript: pinned in ``static/assets.json``, checked by hash.

``python -m manager.console.assets check`` compares each vendored file with its recorded
SHA-512; ``fetch`` takes the pinned version again from the npm registry (``npm pack``),
checks the tarball against the registry's ``integrity`` recorded here, and rewrites the file
and the manifest (``make console-assets``). Nothing is fetched at run time: the manager
serves the vendored copy, so the console works with no internet access.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

__all__ = ["MANIFEST", "STATIC", "check", "fetch", "sha512_of"]

STATIC = Path(__file__).parent / "static"
MANIFEST = STATIC / "assets.json"


def sha512_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def check() -> list[str]:
    """The vendored files whose bytes differ from the manifest (empty: all good)."""
    bad = []
    for asset in json.loads(MANIFEST.read_text())["assets"]:
        if sha512_of((STATIC / asset["file"]).read_bytes()) != asset["file_sha512"]:
            bad.append(asset["file"])
    return bad


def fetch(version: str | None = None) -> None:
    """Take each asset again from npm (optionally at a new ``version``) and re-pin it."""
    manifest = json.loads(MANIFEST.read_text())
    for asset in manifest["assets"]:
        spec = f"{asset['package']}@{version or asset['version']}"
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["npm", "pack", spec, "--json"], cwd=tmp, check=True, capture_output=True
            )
            packed = json.loads(out.stdout)[0]
            tgz = Path(tmp) / packed["filename"]
            if sha512_of(tgz.read_bytes()) != packed["integrity"]:
                raise SystemExit(f"{spec}: the tarball does not match the registry's integrity")
            if version is None and packed["integrity"] != asset["integrity"]:
                raise SystemExit(f"{spec}: the registry's tarball changed since it was pinned")
            with tarfile.open(tgz) as tar:
                member = tar.extractfile(f"package/{asset['path']}")
                if member is None:
                    raise SystemExit(f"{spec}: no {asset['path']} in the package")
                data = member.read()
        (STATIC / asset["file"]).write_bytes(data)
        asset.update(
            version=packed["version"],
            integrity=packed["integrity"],
            file_sha512=sha512_of(data),
        )
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fetch"]:
        fetch(sys.argv[2] if len(sys.argv) > 2 else None)
    elif bad := check():
        raise SystemExit(f"vendored assets differ from static/assets.json: {', '.join(bad)}")
    else:
        print("console assets match static/assets.json")
