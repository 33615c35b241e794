"""The connection limits as an operator sets them: refused at start when they make no sense."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.cli import EXIT_USAGE, main


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--header-timeout", "0", "must be positive"),
        ("--idle-timeout", "-1", "must be positive"),
        ("--fd-check-interval", "0", "must be positive"),
        ("--max-unauthenticated", "0", "at least 1"),
    ],
)
def test_a_limit_that_makes_no_sense_is_refused_before_anything_starts(
    tmp_path: Path, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert main(["serve", "--data-dir", str(data), flag, value]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not data.exists()
