"""One version, from the git tag, reported the same by all three commands and the package."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

import pytest

import delegate.cli
import manager.cli
import manager.client.cli.main
from shared import __version__

COMMANDS: list[tuple[str, Callable[..., int]]] = [
    ("tether-manager", manager.cli.main),
    ("tether-delegate", delegate.cli.main),
    ("tether", manager.client.cli.main.main),
]


@pytest.mark.parametrize(("prog", "main"), COMMANDS)
def test_every_command_prints_the_release_with_version(
    prog: str, main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["--version"])
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    assert code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {__version__}"


def test_an_installed_tree_knows_its_version_from_git() -> None:
    # The fallback is for trees without git metadata; a checkout with git never shows it.
    assert __version__ != "0.0.0+unknown"
    assert version("tether").split("+")[0].split(".")[:2] == __version__.split(".")[:2]
