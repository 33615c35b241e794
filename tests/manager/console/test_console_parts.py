"""The console's pure parts: terminal colours made safe, the vendored script's hash, the
charts' numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from manager.console import assets
from manager.console.ansi import spans
from manager.console.charts import latency_chart, outcome_chart, percentile


def test_sgr_codes_become_classes_and_reset() -> None:
    line = "\x1b[1;31mred\x1b[0m plain \x1b[32;44mgreen on blue\x1b[39mbg only"
    assert spans(line) == [
        ("fg-red a-bold", "red"),
        ("", " plain "),
        ("fg-green bg-blue", "green on blue"),
        ("bg-blue", "bg only"),
    ]


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("a\x1b]0;window title\x07b", "ab"),  # OSC title, ended by BEL
        ("a\x1b]8;;javascript:alert(1)\x1b\\link\x1b]8;;\x1b\\b", "alinkb"),  # OSC 8 link
        ("a\x1b[2J\x1b[Hb", "ab"),  # clear screen, cursor home
        ("a\x1b[?2004hb", "ab"),  # bracketed paste
        ("a\x1bPq#0;2;0;0;0\x1b\\b", "ab"),  # DCS (sixel)
        ("a\x07\x08\x00b\tc", "ab\tc"),  # controls but the tab
        ("a\x1b", "a"),  # a lone ESC at the end
        ("\x1b[38;5;196mx\x1b[48;2;1;2;3my", "xy"),  # 256 and true colour: not drawn
    ],
)
def test_every_other_escape_is_dropped(line: str, shown: str) -> None:
    assert "".join(text for _, text in spans(line)) == shown


def test_class_names_come_from_the_fixed_vocabulary_only() -> None:
    # Whatever the parameters, no class is made of the line's own text.
    for line in ("\x1b[<script>m", "\x1b[1;999;31mx", '\x1b["onerror=1m'):
        for classes, _ in spans(line):
            assert all(c.startswith(("fg-", "bg-", "a-")) for c in classes.split())


def test_the_vendored_script_matches_its_pinned_hash() -> None:
    assert assets.check() == []
    pinned = json.loads(assets.MANIFEST.read_text())["assets"]
    assert [a["file"] for a in pinned] == ["htmx.min.js"]
    assert pinned[0]["integrity"].startswith("sha512-")


def test_a_changed_vendored_file_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path
    (root / "htmx.min.js").write_bytes(b"/* not htmx */")
    (root / "assets.json").write_text(assets.MANIFEST.read_text())
    monkeypatch.setattr(assets, "STATIC", root)
    monkeypatch.setattr(assets, "MANIFEST", root / "assets.json")
    assert assets.check() == ["htmx.min.js"]


def test_percentiles() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_outcomes_are_counted_per_minute() -> None:
    now = 10_000.0
    tasks: list[dict[str, Any]] = [
        {"state": "succeeded", "finished_at": now - 10},
        {"state": "failed", "finished_at": now - 20},
        {"state": "cancelled", "finished_at": now - 70},
        {"state": "running", "finished_at": None},
        {"state": "succeeded", "finished_at": now - 4000},  # older than the hour
    ]
    chart = outcome_chart(tasks, now)
    assert sorted((b.kind, b.title) for b in chart.bars) == [
        ("failed", "1 failed, 0 min ago"),
        ("other", "1 other, 1 min ago"),
        ("succeeded", "1 succeeded, 0 min ago"),
    ]


def test_latency_is_queued_to_started() -> None:
    now = 10_000.0
    tasks = [{"created_at": now - 100 - w, "started_at": now - 100} for w in (1.0, 2.0, 10.0)]
    chart = latency_chart(tasks, now)
    assert chart.y_max == 10.0  # the p95 (10 s) sets the scale
    assert [kind for kind, _ in chart.lines] == ["p50", "p95"]
    assert not chart.empty
