"""Terminal colours in a log line, made safe for a page.

SGR sequences (``ESC [ ... m``) become spans with class names from a fixed vocabulary
(never from the line); every other escape sequence (cursor moves, titles, OSC 8 links,
bracketed paste, ...) and every control character but the tab is dropped. The text itself
is left to the template, which escapes it.
"""

from __future__ import annotations

import re

__all__ = ["Span", "spans"]

Span = tuple[str, str]  # (space-separated classes, text)

# CSI (with SGR among them), OSC (ended by BEL or ST), the other two-byte escapes, and C0/C1
# controls except tab. A lone ESC at the end is dropped too.
_ESCAPE = re.compile(
    r"\x1b\[([0-?]*)[ -/]*([@-~])"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)

_BASIC = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


class _Style:
    __slots__ = ("bg", "bold", "dim", "fg", "italic", "underline")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fg: str | None = None
        self.bg: str | None = None
        self.bold = self.dim = self.italic = self.underline = False

    def classes(self) -> str:
        out = []
        if self.fg:
            out.append(f"fg-{self.fg}")
        if self.bg:
            out.append(f"bg-{self.bg}")
        for flag in ("bold", "dim", "italic", "underline"):
            if getattr(self, flag):
                out.append(f"a-{flag}")
        return " ".join(out)

    def apply(self, params: str) -> None:
        codes = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 2:
                self.dim = True
            elif c == 3:
                self.italic = True
            elif c == 4:
                self.underline = True
            elif c == 22:
                self.bold = self.dim = False
            elif c == 23:
                self.italic = False
            elif c == 24:
                self.underline = False
            elif 30 <= c <= 37:
                self.fg = _BASIC[c - 30]
            elif 90 <= c <= 97:
                self.fg = "bright-" + _BASIC[c - 90]
            elif c == 39:
                self.fg = None
            elif 40 <= c <= 47:
                self.bg = _BASIC[c - 40]
            elif 100 <= c <= 107:
                self.bg = "bright-" + _BASIC[c - 100]
            elif c == 49:
                self.bg = None
            elif c in (38, 48):
                # 256 colours (5;n) and true colour (2;r;g;b): not drawn, their numbers skipped.
                i += 2 if codes[i + 1 : i + 2] == [5] else 4
            i += 1


def spans(line: str) -> list[Span]:
    style = _Style()
    out: list[Span] = []
    pos = 0
    for m in _ESCAPE.finditer(line):
        if m.start() > pos:
            out.append((style.classes(), line[pos : m.start()]))
        pos = m.end()
        if m.group(2) == "m":
            style.apply(m.group(1))
    if pos < len(line):
        out.append((style.classes(), line[pos:]))
    return out
