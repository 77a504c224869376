"""The interactive loop: prompt_toolkit prompt, toolbar, key bindings, streamed continuations, Ctrl+C.

The prompt shows at once; the model loads on a background thread meanwhile (commands work, a text
line waits for it behind a spinner).  Between prompts the REPL owns the screen: a continuation is
printed piece by piece as the session yields it, and Ctrl+C stops it with what was shown kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from korepl import commands, paths, store
from korepl.loading import DEMO_MODEL_DIR, ModelUnavailable
from korepl.settings import Config, SettingError, Settings

STYLE = Style.from_dict({
    "continuation": "ansicyan",
    "unsure": "ansiyellow",
    "doubtful": "ansired underline",
    "note": "ansibrightblack",
    "error": "ansired",
    "bottom-toolbar": "noreverse bg:ansiblack ansiwhite",
    "bottom-toolbar.warn": "bg:ansiyellow ansiblack",
})
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
BLOCK = '"""'


class BackgroundLoad:
    """Loads the model on a thread so the prompt can show at once."""

    def __init__(self, config: Config):
        self.loaded = None
        self.error: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self._thread.start()

    def _run(self, config: Config) -> None:
        source = config.model
        try:
            from korepl.loading import load_model

            self.loaded = load_model(source, config.device, config.dtype, config.quantize)
        except ModelUnavailable as exc:
            self.error = str(exc)
        except Exception as exc:  # anything else still reaches the user as one paragraph
            self.error = f"korepl could not load the model '{source}': {exc}"
        finally:
            self.done.set()


class CommandCompleter(Completer):
    """Tab completion from the command table: names with their help, then each command's first words."""

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        if not commands.is_command(text):
            return
        name, space, rest = text[1:].partition(" ")
        if not space:
            for command in commands.COMMANDS:
                for candidate in (command.name, *command.aliases):
                    if candidate.startswith(name):
                        yield Completion("/" + candidate, start_position=-len(text), display_meta=command.help)
            return
        command = commands.find(name)
        if command is not None and " " not in rest:
            for choice in command.choices:
                if choice.startswith(rest):
                    yield Completion(choice, start_position=-len(rest))


class InterruptGuard:
    """Ctrl+C raises at once, except while a piece of text is being printed: then right after it.

    So a continuation can be stopped in the middle of a forward pass, yet never in the middle of
    writing a piece to the screen (which would leave the screen short of the kept text).  The
    terminal is also told not to discard output still queued when Ctrl+C arrives (NOFLSH), which
    it otherwise does: the screen would lose text that the context keeps; and not to echo keys
    typed meanwhile, which the next prompt shows in its line.
    """

    def __init__(self):
        self._shielded = False
        self._pending = False
        self._tty_attrs = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        with contextlib.suppress(Exception):  # not a terminal (piped): nothing to keep
            import termios

            fd = sys.stdin.fileno()
            self._tty_attrs = termios.tcgetattr(fd)
            attrs = termios.tcgetattr(fd)
            attrs[3] |= termios.NOFLSH
            attrs[3] &= ~termios.ECHO  # keys typed ahead wait for the next prompt instead of landing in the text
            termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
        return self

    def __exit__(self, *exc_info):
        signal.signal(signal.SIGINT, self._previous)
        if self._tty_attrs is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._tty_attrs)
        return False

    def _on_sigint(self, signum, frame):
        if self._shielded:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def shield(self):
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    return bindings


class Repl:
    def __init__(self, config: Config, notices: list[str], resume: dict | None = None):
        self._settings = config.decoding
        self.model_label = "demo" if Path(config.model) == DEMO_MODEL_DIR else config.model
        self._load = BackgroundLoad(config)
        self.config = config
        self._session = None
        self._quit = False
        self.last_speed: float | None = None
        self._notices = list(notices)  # printed before the next prompt
        self._slides_seen = 0
        self._resume = resume
        self._load_error_shown = False

    # --- the state commands see ----------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        if self._session is not None:
            self._session.settings = value  # may refuse (SettingError): then nothing changes
        self._settings = value

    @property
    def session(self):
        if self._session is None and self._load.loaded is not None:
            from korepl.session import Session

            try:
                self._session = Session(self._load.loaded, self._settings)
            except SettingError as exc:  # newline or mode asked for tokens this model lacks
                self._notices.append(f"korepl: {exc}; using newline auto and mode write")
                self._settings = dataclasses.replace(self._settings, newline="auto", mode="write")
                self._session = Session(self._load.loaded, self._settings)
            if self._resume is not None:
                self._restore(self._resume)
                self._resume = None
            self._print_notices()
        return self._session

    @property
    def load_error(self) -> str | None:
        return self._load.error

    def _print_notices(self) -> None:
        while self._notices:
            self._print(self._notices.pop(0), "note")

    def _restore(self, data: dict) -> None:
        try:
            store.restore(self._session, data, str(paths.last_session_file()))
        except store.StoreError as exc:
            self._notices.append(f"korepl: cannot resume: {exc}; starting with an empty text")
            return
        self._settings = self._session.settings
        self._notices.append(f"resumed: {len(self._session.ids)} tokens; the text ends: "
                             f"{self._session.text[-60:]}")

    def model_settings(self) -> list[tuple[str, str]]:
        loaded = self._load.loaded
        in_effect = f"{loaded.precision} ({loaded.precision_note})" if loaded else "(the model is loading)"
        return [("model", self.model_label), ("device", str(loaded.device) if loaded else self.config.device),
                ("dtype", self.config.dtype), ("quantize", self.config.quantize), ("precision", in_effect)]

    def reset(self) -> None:
        if self._session is not None:
            self._session = None
            self.last_speed = None
            self._slides_seen = 0

    def quit(self) -> None:
        self._quit = True

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        prompt = PromptSession(
            history=open_history(),
            auto_suggest=AutoSuggestFromHistory(),
            completer=CommandCompleter(),
            complete_while_typing=True,
            key_bindings=key_bindings(),
            bottom_toolbar=self._toolbar,
            refresh_interval=0.5,  # the toolbar notices when the model is ready
            style=STYLE,
        )
        self._print(f"korepl: writing with {self.model_label}. /help lists the commands; Ctrl+D leaves.", "note")
        while not self._quit:
            if self._load.done.is_set() and not self._load.error:
                _ = self.session  # once loaded: make the session (and resume) before the next prompt
            elif self._load.error and not self._load_error_shown:
                self._print(self._load.error, "error")
                self._load_error_shown = True
            self._print_notices()
            try:
                line = self._read(prompt)
            except KeyboardInterrupt:
                continue  # Ctrl+C at the prompt clears the line
            except EOFError:
                break
            try:
                self._handle(line)
            except KeyboardInterrupt:  # during a command's own model run (a /peek after /load, say)
                self._print("[stopped]", "note")
        self._autosave()
        return 0

    def _handle(self, line: str) -> None:
        if commands.is_command(line) and "\n" not in line:
            reply = commands.run_command(self, line)
            self._show(reply)
            if reply.stream is not None:
                self._explain_ending(self.session, self._continue(self.session, reply.stream))
        else:
            self._write(line)

    def _autosave(self) -> None:
        """Leave the session where `korepl --resume` finds it."""
        if self._session is None:
            return
        try:
            store.save(self._session, paths.last_session_file())
        except store.StoreError as exc:
            self._print(f"could not save the session for --resume: {exc}", "error")

    def edit_text(self, text: str) -> str | None:
        """Open `text` in $VISUAL or $EDITOR (vi when neither is set); the edited text, or None if unchanged."""
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.TemporaryDirectory(prefix="korepl-") as folder:
            path = Path(folder) / "text.txt"
            path.write_text(text, encoding="utf-8")
            try:
                subprocess.run([*shlex.split(editor), str(path)], check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise commands.CommandError(f"the editor '{editor}' failed ({exc}); the text is unchanged") from None
            edited = path.read_text(encoding="utf-8")
        edited = edited[:-1] if edited.endswith("\n") and not text.endswith("\n") else edited  # editors add one
        return None if edited == text else edited

    def _read(self, prompt: PromptSession) -> str | None:
        with patch_stdout():
            line = prompt.prompt("> ")
        if not line.lstrip().startswith(BLOCK):
            return line
        # A """ block: lines until the closing """, taken as one text.
        body = line.lstrip()[len(BLOCK):]
        lines = []
        while BLOCK not in body:
            lines.append(body)
            with patch_stdout():
                body = prompt.prompt("... ")
        lines.append(body[: body.index(BLOCK)])
        return "\n".join(lines).strip("\n")

    def _write(self, line: str) -> None:
        if self.session is None and not self._wait_for_model():
            return
        session = self.session
        if line:
            session.add_line(line)
            if len(session.ids) > session.window:
                self._print(f"[the text is {len(session.ids)} tokens, more than the model's window of "
                            f"{session.window}: all of it is kept, and the model sees the most recent part]", "note")
        written = self._continue(session, session.generate())
        self._explain_ending(session, written)

    def _explain_ending(self, session, written: str) -> None:
        """Never a silent turn, never an unseen slide: one dim line says what happened."""
        ending = session.last_ending
        silent = ending is not None and not written.strip()
        if silent and ending.reason == "stop-token":
            self._print(f"[the model ended the text at once ({ending.detail}); /min 1 makes it write at least "
                        "one token, or press Enter to continue anyway]", "note")
        elif silent and ending.reason == "stop-text":
            self._print(f"[the continuation began with the stop text {ending.detail!r}; nothing was added; "
                        f"/stop del {ending.detail} lets it through]", "note")
        if session.slides > self._slides_seen:
            self._slides_seen = session.slides
            self._print(f"[the window slid: the model no longer sees the first {session.view_start} tokens "
                        "of the text]", "note")

    def _continue(self, session, steps) -> str:
        """Stream one continuation (session.generate's steps) to the screen; returns the text written."""
        from korepl.session import SessionError  # loaded with the model, not before the prompt shows

        start_len, started = len(session.ids), time.perf_counter()
        at_line_start, written = True, ""
        with InterruptGuard() as guard, contextlib.closing(steps):
            try:
                for step in steps:
                    text = step.text.lstrip(" ") if at_line_start else step.text
                    at_line_start = at_line_start and not text
                    with guard.shield():
                        self._print(text, self._token_style(step.probability), end="")
                        written += text
            except SessionError as exc:  # a move that cannot be made now (an empty text, no start token)
                self._print(str(exc), "error")
            except KeyboardInterrupt:
                steps.close()
                self._print("" if at_line_start else "\n", end="")
                self._print("[stopped; what was written stays]", "note")
                at_line_start = True
        elapsed = time.perf_counter() - started
        produced = max(0, len(session.ids) - start_len)
        self.last_speed = produced / elapsed if produced and elapsed > 0 else None
        if not at_line_start:
            self._print("")
        return written

    def _wait_for_model(self) -> bool:
        """Show a spinner until the model is ready; False when it failed or the wait was cancelled."""
        frame = 0
        try:
            while not self._load.done.wait(0.1):
                sys.stdout.write(f"\r{SPINNER[frame % len(SPINNER)]} waiting for the model to load …")
                sys.stdout.flush()
                frame += 1
        except KeyboardInterrupt:
            sys.stdout.write("\r\033[K")
            self._print("stopped waiting; the line was not added", "note")
            return False
        if frame:
            sys.stdout.write("\r\033[K")
        if self._load.error:
            self._print(self._load.error, "error")
            return False
        return True

    # --- output --------------------------------------------------------------------------------

    def _token_style(self, probability: float) -> str:
        """With /probs on, unsure tokens stand out: yellow below 50%, red below 20%."""
        if not self._settings.probs:
            return "continuation"
        return "continuation" if probability >= 0.5 else "unsure" if probability >= 0.2 else "doubtful"

    def _print(self, text: str, style: str = "", end: str = "\n") -> None:
        print_formatted_text(FormattedText([(f"class:{style}" if style else "", text)]), style=STYLE, end=end)

    def _show(self, reply: commands.Reply) -> None:
        for line in reply.lines:
            self._print(line, "error" if reply.error else "")

    def _toolbar(self):
        if not self._load.done.is_set():
            return FormattedText([("", f" {self.model_label} │ loading the model … (commands work meanwhile)")])
        if self._load.error:
            return FormattedText([("class:bottom-toolbar.warn", " no model: it could not be loaded (any command "
                                                                "says why); /quit to leave")])
        s = self._settings
        mode = "greedy" if s.greedy else f"{s.sampler} top-k {s.top_k}"
        if not s.greedy and s.top_p < 1:
            mode += f" top-p {s.top_p:g}"
        if not s.greedy and s.temperature != 1:
            mode += f" temp {s.temperature:g}"
        session = self._session
        if session is None:
            return FormattedText([("", f" {self.model_label} │ ready")])
        used = len(session.ids) - session.view_start
        speed = f"{self.last_speed:.1f} tok/s" if self.last_speed else "– tok/s"
        text = (f" {self.model_label} │ {mode} rep {s.repetition_penalty:g} max {s.max_new_tokens} │ "
                f"{used}/{session.window} tokens │ {speed}")
        if used >= s.window_warn * session.window:
            return FormattedText([("class:bottom-toolbar.warn", text + " │ the window is nearly full")])
        return FormattedText([("", text)])


def open_history() -> History:
    """History in the user's state folder; in memory when that folder cannot be written."""
    path = paths.history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()


def run_repl(config: Config, notices: list[str], resume: dict | None = None) -> int:
    return Repl(config, notices, resume).run()
