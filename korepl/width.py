"""Display width: Hangul and other wide characters take two terminal columns, so columns are padded by width.

The one place korepl measures text on screen (prompt_toolkit's `get_cwidth`, which follows wcwidth).
"""

from __future__ import annotations

from prompt_toolkit.utils import get_cwidth


def width(text: str) -> int:
    """Columns `text` takes on a terminal."""
    return get_cwidth(text)


def ljust(text: str, columns: int) -> str:
    """`text` padded with spaces on the right to `columns` display columns (never cut)."""
    return text + " " * max(0, columns - width(text))


def rjust(text: str, columns: int) -> str:
    return " " * max(0, columns - width(text)) + text


def clip(text: str, columns: int, ellipsis: str = "…") -> str:
    """`text` cut to at most `columns` display columns, ending in `ellipsis` when cut (never half a wide character)."""
    if width(text) <= columns:
        return text
    room, out = columns - width(ellipsis), []
    for char in text:
        room -= get_cwidth(char)
        if room < 0:
            break
        out.append(char)
    return "".join(out) + ellipsis
