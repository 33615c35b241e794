"""The host-side commands of workload identity and retention refuse bad usage before
touching anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.cli import main


def test_the_issuer_must_be_an_https_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("http://tether.example.com", "https://x/?a=b"):
        assert main(["serve", "--data-dir", str(tmp_path / "d"), "--oidc-issuer", bad]) == 2
        assert "--oidc-issuer takes an https:// URL" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_purge_and_rotation_need_a_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["purge", "--dry-run", "--data-dir", str(tmp_path)]) == 2
    assert "no master key" in capsys.readouterr().err
    assert main(["keys", "rotate-oidc", "--data-dir", str(tmp_path)]) == 2
    assert "no master key" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
