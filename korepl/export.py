"""The writing, out of korepl: /export FILE and `korepl --resume --export FILE`.

`.txt` is the text as the writer reads it (chat markup hidden), UTF-8, nothing added.  `.md` puts the
memory first as a quoted note, then the text; with alternatives, each continuation of the current
path that has siblings gets a footnote listing them.  Files are written as sessions are (temporary
file beside it, fsync, rename), so a crash leaves the old file whole; a missing folder is refused,
never made, since a typo in a path should not leave folders about.
"""

from __future__ import annotations

from pathlib import Path

from korepl import store, turns
from korepl.controls import readable
from korepl.errors import UserError

FORMATS = (".txt", ".md")


class ExportError(UserError):
    """An export that cannot be made; nothing was written."""


def plain(session) -> str:
    return readable(session.text)


def markdown(session, alternatives: bool = False) -> str:
    """The memory as a quoted note, the text, and (when asked) the alternatives as footnotes."""
    text, notes = session.text, []
    if alternatives:
        text, notes = _with_footnotes(session.text, session.turn)
    parts = []
    memory = session.settings.memory
    if memory.strip():
        quoted = "\n".join(f"> {line}".rstrip() for line in readable(memory).split("\n"))
        parts.append(f"> **Memory**\n>\n{quoted}")
    parts.append(readable(text))
    parts.extend(notes)
    return "\n\n".join(parts) + "\n"


def _with_footnotes(text: str, current: turns.Turn) -> tuple[str, list[str]]:
    """`text` with a [^n] after each continuation of the path that has alternatives, and the footnotes."""
    chain = current._chain()
    marks: list[tuple[int, int, turns.Turn]] = []  # (where in the text, footnote number, the continuation)
    for depth, turn in enumerate(chain):
        if turn.kind != "generated":
            continue
        siblings = [t for t in turn.parent.children if t.kind == "generated"]
        if len(siblings) < 2:
            continue
        end = turn.keep_chars + len(turn.new_text)
        # A later turn (an edit, an undo then a new line) may have cut into it: mark where it still stands.
        for later in chain[depth + 1:]:
            end = min(end, later.keep_chars)
        marks.append((end, len(marks) + 1, turn))
    notes = []
    for at, number, turn in reversed(marks):  # from the end, so earlier places stay where they are
        text = text[:at] + f"[^{number}]" + text[at:]
    for _, number, turn in marks:
        siblings = [t for t in turn.parent.children if t.kind == "generated"]
        others = [(i, t) for i, t in enumerate(siblings, 1) if t is not turn]
        lines = [f"[^{number}]: alternatives to continuation {siblings.index(turn) + 1} of {len(siblings)}:"]
        for i, other in others:
            body = readable(other.new_text).strip().replace("\n", "\n    ")
            lines.append(f"\n    {i}. {body}" if body else f"\n    {i}. (empty)")
        notes.append("\n".join(lines))
    return text, notes


def check_target(target: str | Path, alternatives: bool = False) -> Path:
    """The path to export to, or ExportError when it cannot be one (asked before any work is done)."""
    try:
        path = Path(target).expanduser()
    except RuntimeError:  # ~someone who is not a user here
        raise ExportError(f"no such home folder in {str(target)!r}") from None
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"export to a .txt file (the plain text) or a .md file (Markdown, with the memory); "
                          f"got {str(path)!r}")
    if alternatives and suffix != ".md":
        raise ExportError("alternatives go into Markdown footnotes: export to a .md file for them")
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"no folder {str(folder)!r}: korepl does not make folders; make it or choose another")
    if path.is_dir():
        raise ExportError(f"{str(path)!r} is a folder; give a file name")
    return path


def export(session, target: str | Path, alternatives: bool = False) -> str:
    """Write the session's text to `target` (.txt or .md); the reply for the writer, or ExportError."""
    path = check_target(target, alternatives)
    suffix = path.suffix.lower()
    content = plain(session) if suffix == ".txt" else markdown(session, alternatives)
    existed = path.exists()
    try:
        store.write_bytes(path, content.encode("utf-8"), 0o644)
    except (OSError, ValueError) as exc:  # ValueError: a name holding a NUL byte
        reason = getattr(exc, "strerror", None) or exc
        raise ExportError(f"cannot write {str(path)!r} ({reason}); nothing was written") from None
    what = "Markdown" if suffix == ".md" else "text"
    return f"exported the {what} to {path}" + (" (it replaced the file that was there)" if existed else "")
