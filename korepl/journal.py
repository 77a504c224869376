"""The REPL run's own session file, saved after every change, so a crash costs at most the turn in flight.

Each run writes its own file in the state folder's sessions/ (named by its start time and pid), so
no run, and no second korepl beside it, can overwrite a fuller session with an emptier one.  A file
is made only once the session has text; it is rewritten whole and atomically (temporary file, fsync,
rename) whenever the session's revision moves.  That costs a few milliseconds a turn even for long
texts (the README gives the figures), and a snapshot is always a complete, loadable session, which
an append-only log would only be after a replay.

A crash report (the traceback, never shown on screen) goes beside the sessions.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from pathlib import Path

from korepl import __version__, paths, store


class Journal:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep
        self.path: Path | None = None  # made with the first save that has text
        self._saved_revision: tuple[int, int] | None = None  # (id of the session, its revision) last saved
        store.remove_stale_temps(folder)

    def save(self, session) -> str | None:
        """Save `session` if it changed since the last save; a message when saving failed, else None."""
        if session is None:
            return None
        mark = (id(session), session.revision)
        if mark == self._saved_revision:
            return None
        if self.path is None:
            if not session.ids and not session.root.children:
                return None  # nothing written yet: no file, so an empty run never shadows a full one
            self.path = store.new_session_path(self.folder)
        try:
            store.save(session, self.path)
        except store.StoreError as exc:
            return f"korepl could not save the session ({exc}); your text is still here, in this window"
        self._saved_revision = mark
        store.prune(self.folder, self.keep, protect={self.path})
        return None

    def start_new_file(self) -> None:
        """After /reset: what was written stays in its file; the next text gets a file of its own."""
        self.path = None
        self._saved_revision = None


def listing(folder: Path) -> list[str]:
    """The saved sessions, newest first, a line each (`korepl --sessions`, `/sessions`)."""
    found = store.session_files(folder)
    if not found:
        return [f"no saved sessions in {folder}"]
    lines = [f"sessions in {folder}, newest first (korepl --resume FILE continues one):"]
    for info in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.modified))
        lines.append(f"  {info.path.name}  {when}  {info.tokens:>6} tokens  {info.size / 1024:>7.1f} KiB  "
                     f"{info.first_words}")
    return lines


def write_crash_report(exc: BaseException) -> Path | None:
    """The traceback and the versions, in a file of the state folder; its path, or None if it cannot be written."""
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    path = paths.state_dir() / f"crash-{stamp}-{os.getpid()}.txt"
    lines = [f"korepl {__version__} crashed at {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
             f"python {sys.version.split()[0]}, {_versions()}, {platform.platform()}", "",
             *traceback.format_exception(exc)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines), encoding="utf-8")
    except OSError:
        return None
    return path


def _versions() -> str:
    """torch's and transformers' versions, where they were loaded (a crash before the model loads has neither)."""
    loaded = [(name, sys.modules.get(name)) for name in ("torch", "transformers")]
    return ", ".join(f"{name} {getattr(module, '__version__', '?')}" for name, module in loaded if module) or "no torch yet"
