"""The screen between two prompts: styled lines, a continuation streamed as it comes, Ctrl+C stopping it.

A continuation is printed piece by piece as the session yields it.  Ctrl+C stops it at once, even
inside a forward pass, but never in the middle of printing a piece (korepl.terminal.InterruptGuard),
so what was shown is what the session keeps.  After it, one dim line says why a turn added nothing
or that the model's window slid.  While the model loads, a text line waits behind a spinner.
"""

from __future__ import annotations

import contextlib
import sys
import time

from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from korepl.terminal import InterruptGuard

STYLE = Style.from_dict({
    "continuation": "ansicyan",
    "unsure": "ansiyellow",
    "doubtful": "ansired underline",
    "note": "ansibrightblack",
    "error": "ansired",
})
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def say(text: str, style: str = "", end: str = "\n") -> None:
    """Print `text` in one of STYLE's classes ("note", "error", ...), or plain."""
    print_formatted_text(FormattedText([(f"class:{style}" if style else "", text)]), style=STYLE, end=end)


def token_style(probability: float, probs: bool) -> str:
    """With /probs on, unsure tokens stand out: yellow below 50%, red below 20%."""
    if not probs:
        return "continuation"
    return "continuation" if probability >= 0.5 else "unsure" if probability >= 0.2 else "doubtful"


class Printer:
    """Streams continuations; remembers the window slides already told."""

    def __init__(self):
        self._slides_seen = 0

    def forget_session(self) -> None:
        """After /reset: the next session has slid no window yet."""
        self._slides_seen = 0

    def continuation(self, session, steps, probs: bool) -> float | None:
        """Show one continuation (session.generate's steps, or a command's), then what ended it.

        Returns its speed in tokens a second (None when it wrote no token), for the toolbar.
        """
        written, speed = self._stream(session, steps, probs)
        self._explain_ending(session, written)
        return speed

    def _stream(self, session, steps, probs: bool) -> tuple[str, float | None]:
        from korepl.errors import UserError

        start_len, started = len(session.ids), time.perf_counter()
        at_line_start, written = True, ""
        with InterruptGuard() as guard, contextlib.closing(steps):
            try:
                for step in steps:
                    text = step.text.lstrip(" ") if at_line_start else step.text
                    at_line_start = at_line_start and not text
                    with guard.shield():
                        say(text, token_style(step.probability, probs), end="")
                        written += text
            except UserError as exc:  # a move that cannot be made now (an empty text), a server that failed
                say(("" if at_line_start else "\n") + str(exc), "error")
                at_line_start = True
            except KeyboardInterrupt:
                steps.close()
                say("" if at_line_start else "\n", end="")
                say("[stopped; what was written stays]", "note")
                at_line_start = True
        elapsed = time.perf_counter() - started
        produced = max(0, len(session.ids) - start_len)
        if not at_line_start:
            say("")
        return written, produced / elapsed if produced and elapsed > 0 else None

    def _explain_ending(self, session, written: str) -> None:
        """Never a silent turn, never an unseen slide: one dim line says what happened."""
        ending = session.last_ending
        silent = ending is not None and not written.strip()
        if silent and ending.reason == "stop-token":
            again = "" if session.settings.greedy else ", or press Enter to continue anyway"
            say(f"[the model ended the text at once ({ending.detail}); /min 1 makes it write at least "
                f"one token{again}]", "note")
        elif silent and ending.reason == "stop-text" and ending.kept:  # a kept stop of blanks: shown, yet unseen
            say(f"[the continuation ended at once with the kept stop text {ending.detail!r}, which stays in the "
                f"text; /stop del {ending.detail} lets it run on]", "note")
        elif silent and ending.reason == "stop-text":
            say(f"[the continuation began with the stop text {ending.detail!r}; nothing was added; "
                f"/stop del {ending.detail} lets it through]", "note")
        if session.slides > self._slides_seen:
            self._slides_seen = session.slides
            say(f"[the window slid: the model no longer sees the first {session.view_start} tokens "
                "of the text]", "note")


def wait_for_model(load) -> bool:
    """A spinner until `load` (korepl.repl.BackgroundLoad) is done; False when it failed or Ctrl+C ended the wait."""
    frame = 0
    try:
        while not load.done.wait(0.1):
            sys.stdout.write(f"\r{SPINNER[frame % len(SPINNER)]} waiting for the model to load …")
            sys.stdout.flush()
            frame += 1
    except KeyboardInterrupt:
        sys.stdout.write("\r\033[K")
        say("stopped waiting; the line was not added", "note")
        return False
    if frame:
        sys.stdout.write("\r\033[K")
    if load.error:
        say(load.error, "error")
        return False
    return True
