"""Breaking a paragraph into lines that fit a width, never inside a character or a Latin word.

Break opportunities (a simple form of Unicode's line breaking, UAX #14): at spaces, and before or after
any CJK character (ideographs, kana, CJK punctuation, full-width forms), so Chinese wraps character by
character and Latin text word by word, mixed text both ways. Closing punctuation (，。、；：？！）》」』】
and the like) stays with the character before it and opening punctuation (（《「『【 ...) with the one
after, so no line starts with a comma or ends with an opening bracket (the basic rule of Chinese
typesetting, W3C "Requirements for Chinese Text Layout" §3.1.7). A unit wider than a whole line (a
very long word or URL) is the one thing cut, between two characters.
"""

import re
from collections.abc import Callable

_CLOSE = "，。、；：？！）》」』】〕〉〗”’…・％"
_OPEN = "（《「『【〔〈〖“‘"
_CJK = "\u2e80-\u2fff\u3000-\u30ff\u3100-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
_TOKEN = re.compile(rf"\s+|[{_OPEN}]*(?:[{_CJK}]|[^\s{_CJK}]+)[{_CLOSE}]*")


def units(text: str) -> list[str]:
    """The text as unbreakable units and whitespace runs, in order: joined, they give the text back."""
    return _TOKEN.findall(text)


def wrap(text: str, width: Callable[[str], float], max_width: float) -> list[str]:
    """The lines of `text`, each as wide as `width` measures at most `max_width` (a single character
    wider than that still makes its own line); the spaces at a break are dropped, others become one."""
    lines, line = [], ""
    for unit in units(text):
        if unit.isspace():
            line += " " if line else ""
            continue
        if width(line + unit) <= max_width:
            line += unit
            continue
        if line.strip():
            lines.append(line.rstrip())
        while len(unit) > 1 and width(unit) > max_width:  # wider than a line: cut between characters
            cut = next((n for n in range(len(unit) - 1, 1, -1) if width(unit[:n]) <= max_width), 1)
            lines.append(unit[:cut])
            unit = unit[cut:]
        line = unit
    if line.strip():
        lines.append(line.rstrip())
    return lines
