"""Any bytes in, clean text out: the one place where outside text becomes the writer's text.

Text reaches korepl as bytes (stdin, files) or as str that may carry undecodable bytes as
surrogate escapes (argv, and prompt_toolkit's reading of the terminal).  Both go through here:
UTF-8 first; where that fails, CP949 (what a Korean legacy terminal or file sends); where that
fails too, UTF-8 with each bad byte replaced by U+FFFD.  Terminal control sequences and other
control characters (all but tab and newline) are dropped, so nothing typed or piped can steer the
screen when the text is shown back.  Every fallback comes with one line saying what was done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), or a lone ESC with one following byte.
ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?", re.DOTALL)
# C0 controls except tab and newline, DEL, and the C1 controls.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


@dataclass(frozen=True)
class Clean:
    text: str
    note: str | None = None  # one line for the writer when the input needed more than UTF-8


def decode_bytes(data: bytes, what: str = "the input") -> Clean:
    """Bytes as text: UTF-8, else CP949, else UTF-8 with U+FFFD for what cannot be read."""
    try:
        return _strip_controls(data.decode("utf-8"), what)
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp949")
        note = f"{what} was not UTF-8; it was read as CP949 (the Korean legacy encoding)"
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        note = f"{what} was neither UTF-8 nor CP949; the bytes that could not be read became \ufffd"
    cleaned = _strip_controls(text, what)
    return Clean(cleaned.text, note + ("; control characters were left out" if cleaned.note else ""))


def from_str(text: str, what: str = "the input") -> Clean:
    """A str that may hold undecodable bytes as surrogate escapes (argv, terminal input) made clean."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        if not _only_escapes(text):  # surrogates that stand for no byte: nothing to recover
            cleaned = _strip_controls(_lenient_text(text), what)
            return Clean(cleaned.text, f"{what} held characters that are not text; they became \ufffd")
        return decode_bytes(text.encode("utf-8", errors="surrogateescape"), what)
    return _strip_controls(text, what)


def _only_escapes(text: str) -> bool:
    """True when every surrogate in `text` is an escaped byte (U+DC80..U+DCFF), as surrogateescape makes them."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def _lenient_text(text: str) -> str:
    """`text` with every surrogate (which no UTF-8 text holds) as U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _strip_controls(text: str, what: str) -> Clean:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = CONTROL.sub("", ESCAPE_SEQUENCE.sub("", text))
    if cleaned == text:
        return Clean(text)
    return Clean(cleaned, f"control characters in {what} were left out")
