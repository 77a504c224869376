"""The interactive loop: prompt_toolkit prompt, toolbar, key bindings, streamed continuations, Ctrl+C.

The prompt shows at once; the model loads on a background thread meanwhile (commands work, a text
line waits for it behind a spinner).  Between prompts the REPL owns the screen: a continuation is
printed piece by piece as the session yields it, and Ctrl+C stops it with what was shown kept.
Keys typed between prompts wait for the next prompt, which takes them as if typed there
(korepl.terminal); every line read goes through korepl.textin before the REPL uses it.
After every line the session is saved (korepl.journal); SIGTERM and SIGHUP save and leave, and an
internal error saves, writes a crash report and carries on.
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

from korepl import commands, journal, paths, store, textin
from korepl.loading import DEMO_MODEL_DIR, ModelUnavailable
from korepl.settings import Config, SettingError, Settings
from korepl.terminal import BusyTerminal, InterruptGuard, replay

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
TYPED_AHEAD_NOTE = "[running the line typed while korepl was busy]"
# Internal errors in a row after which korepl leaves (the loop itself is broken, not one command).
MAX_CRASHES_IN_A_ROW = 3


class Hangup(BaseException):
    """SIGTERM or SIGHUP: the session is saved and korepl leaves (not an Exception: nothing may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum



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


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event):
        event.current_buffer.insert_text("\n")

    return bindings


class Repl:
    def __init__(self, config: Config, notices: list[str], resume=None):
        self._settings = config.decoding
        self._chosen = set(config.chosen)  # settings the user set (file, flags, commands): they beat a resume
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
        self._terminal = BusyTerminal()  # between prompts: keys typed meanwhile wait for the next prompt
        self.journal = journal.Journal(paths.sessions_dir(), config.keep_sessions)
        self._hangup = 0  # the SIGTERM or SIGHUP that came, if one did
        self._save_error_shown: str | None = None

    # --- the state commands see ----------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        if self._session is not None:
            self._session.settings = value  # may refuse (SettingError): then nothing changes
        old = dataclasses.asdict(self._settings)
        self._chosen |= {name for name, item in dataclasses.asdict(value).items() if old[name] != item}
        self._settings = value

    @property
    def session(self):
        """The Session, or None while the model loads (or could not be loaded)."""
        return self._session

    def ensure_session(self):
        """Make the session once the model has loaded (resuming a saved one if asked); the session or None."""
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

    def _restore(self, resume) -> None:
        """Continue a saved session: its settings, then over them every setting the user chose.

        So the order is: saved session < user config < flags < commands typed while it loaded.
        """
        session = self._session
        try:
            store.restore(session, resume.data, resume.path)
        except store.StoreError as exc:
            self._notices.append(f"korepl: cannot resume: {exc}; starting with an empty text")
            return
        chosen = {name: getattr(self._settings, name) for name in self._chosen}
        try:
            session.settings = dataclasses.replace(session.settings, **chosen)
        except SettingError as exc:  # a choice this session's tokenizer cannot follow
            self._notices.append(f"korepl: {exc}; keeping the resumed session's settings")
        self._settings = session.settings
        self._notices.append(f"resumed {resume.path}: {len(session.ids)} tokens; the text ends: "
                             f"{session.text[-60:]}")

    def model_settings(self) -> list[tuple[str, str]]:
        loaded = self._load.loaded
        in_effect = f"{loaded.precision} ({loaded.precision_note})" if loaded else "(the model is loading)"
        return [("model", self.model_label), ("device", str(loaded.device) if loaded else self.config.device),
                ("dtype", self.config.dtype), ("quantize", self.config.quantize), ("precision", in_effect)]

    def reset(self) -> None:
        if self._session is not None:
            self._save()  # what was written stays in its own file
            self.journal.start_new_file()
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
        self._prompt = prompt
        previous = {each: signal.signal(each, self._on_hangup) for each in (signal.SIGTERM, signal.SIGHUP)}
        status = 0
        try:
            self._loop(prompt)
        except Hangup as exc:
            status = 128 + exc.signum
        finally:
            self._leave()
            for each, handler in previous.items():
                signal.signal(each, handler)
        return status

    def _on_hangup(self, signum, frame) -> None:
        """SIGTERM, SIGHUP: leave through `run`, which saves.  At the prompt, through the prompt's own exit."""
        for each in (signal.SIGTERM, signal.SIGHUP):  # a second one must not interrupt the save
            signal.signal(each, signal.SIG_IGN)
        self._hangup = signum  # checked again after the prompt, should it be ending as the signal comes
        app = self._prompt.app
        if app.is_running and app.loop is not None:  # raising inside prompt_toolkit's loop would be caught there

            def leave_prompt() -> None:
                if app.is_running and app.future is not None and not app.future.done():
                    app.exit(exception=Hangup(signum))

            app.loop.call_soon_threadsafe(leave_prompt)
            return
        raise Hangup(signum)

    def _loop(self, prompt: PromptSession) -> None:
        crashes = 0
        while not self._quit:
            try:
                self._turn(prompt)
                crashes = 0
            except EOFError:
                return
            except Exception as exc:  # korepl's own fault: save, report, carry on
                crashes += 1
                self._crashed(exc)
                if crashes >= MAX_CRASHES_IN_A_ROW:
                    self._print("korepl keeps failing and leaves; your session is saved.", "error")
                    return

    def _turn(self, prompt: PromptSession) -> None:
        """One prompt and what the line asks for; the session is saved after it, whatever happened."""
        try:
            with self._terminal:
                if self._load.done.is_set() and not self._load.error:
                    self.ensure_session()  # once loaded: make the session (and resume) before the next prompt
                elif self._load.error and not self._load_error_shown:
                    self._print(self._load.error, "error")
                    self._load_error_shown = True
                self._print_notices()
                self._save()
            line = self._read(prompt, self._terminal.take_typed_ahead())
        except KeyboardInterrupt:
            return  # Ctrl+C at the prompt clears the line (or stops a resume's prefill)
        if self._hangup:
            raise Hangup(self._hangup)
        if line is None:
            return
        try:
            with self._terminal:
                self._handle(line)
        except KeyboardInterrupt:  # during a command's own model run (a /peek after /load, say)
            self._print("[stopped]", "note")
        finally:
            self._save()

    def _handle(self, line: str) -> None:
        self.ensure_session()
        if commands.is_command(line) and "\n" not in line:
            reply = commands.run_command(self, line)
            self._show(reply)
            if reply.stream is not None:
                self._explain_ending(self.session, self._continue(self.session, reply.stream))
        else:
            self._write(line)

    def _save(self) -> None:
        """Save the session if it changed; a failure is said once (until it changes), never raised."""
        problem = self.journal.save(self._session)
        if problem and problem != self._save_error_shown:
            self._print(problem, "error")
        self._save_error_shown = problem

    def _crashed(self, exc: Exception) -> None:
        """An internal error: the session is saved first, the traceback goes to a file, one paragraph here."""
        with contextlib.suppress(Exception):
            self._save()
        report = journal.write_crash_report(exc)
        where = f"the details are in {report}" if report else "no crash report could be written"
        saved = f"your session is saved in {self.journal.path}" if self.journal.path else "nothing was lost"
        self._print(f"korepl hit an internal error ({type(exc).__name__}) and carries on; {saved}; {where}. "
                    "Please send that file with a bug report.", "error")

    def _leave(self) -> None:
        """On the way out (Ctrl+D, /quit, SIGTERM, SIGHUP): save, say where, give the terminal back."""
        with contextlib.suppress(Exception):
            if self._session is None or self._consistent(self._session):
                self._save()
        self._terminal.close()  # the shell gets its terminal back as it was
        if self.journal.path is not None and self._save_error_shown is None:
            with contextlib.suppress(Exception):  # the terminal may be gone (SIGHUP)
                self._print(f"saved to {self.journal.path}; korepl --resume continues it", "note")

    @staticmethod
    def _consistent(session) -> bool:
        """False if a signal cut a move short mid-way: then the last saved state is kept instead."""
        return session.text == session.turn.text() and session.ids == session.turn.ids()

    def edit_text(self, text: str) -> str | None:
        """Open `text` in $VISUAL or $EDITOR (vi when neither is set); the edited text, or None if unchanged."""
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.TemporaryDirectory(prefix="korepl-") as folder:
            path = Path(folder) / "text.txt"
            path.write_text(text, encoding="utf-8")
            try:
                with self._terminal.suspended():
                    subprocess.run([*shlex.split(editor), str(path)], check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise commands.CommandError(f"the editor '{editor}' failed ({exc}); the text is unchanged") from None
            clean = textin.decode_bytes(path.read_bytes(), "the edited text")  # the editor may save any bytes
        if clean.note:
            self._print(f"[{clean.note}]", "note")
        edited = clean.text
        edited = edited[:-1] if edited.endswith("\n") and not text.endswith("\n") else edited  # editors add one
        return None if edited == text else edited

    def _read(self, prompt: PromptSession, typed_ahead: bytes = b"") -> str | None:
        """The next line (or block), cleaned; None when cleaning left nothing of a line that had something.

        `typed_ahead` (keys typed while korepl was busy) goes to the prompt first, as if typed there.
        """
        entered_ahead = False

        def take_typed_ahead() -> None:
            nonlocal entered_ahead
            entered_ahead = replay(prompt.app, typed_ahead)

        with patch_stdout():
            line = prompt.prompt("> ", pre_run=take_typed_ahead)
        if entered_ahead:  # Enter was among the keys typed ahead: as a shell would, run the line, but say so
            self._print(TYPED_AHEAD_NOTE, "note")
        if line.lstrip().startswith(BLOCK):
            # A """ block: lines until the closing """, taken as one text.
            body = line.lstrip()[len(BLOCK):]
            lines = []
            while BLOCK not in body:
                lines.append(body)
                with patch_stdout():
                    body = prompt.prompt("... ")
            lines.append(body[: body.index(BLOCK)])
            line = "\n".join(lines).strip("\n")
        clean = textin.from_str(line, "the line")  # a legacy terminal's CP949, stray control keys
        if clean.note:
            self._print(f"[{clean.note}]", "note")
        return None if line and not clean.text else clean.text

    def _write(self, line: str) -> None:
        if self._session is None and not self._wait_for_model():
            return
        session = self.ensure_session()
        if line:
            added = session.add_line(line)
            if added > session.window:
                self._print(f"[the text is {len(session.ids)} tokens, more than the model's window of "
                            f"{session.window}: all of it is kept, and the model sees the most recent part]", "note")
        written = self._continue(session, session.generate())
        self._explain_ending(session, written)

    def _explain_ending(self, session, written: str) -> None:
        """Never a silent turn, never an unseen slide: one dim line says what happened."""
        ending = session.last_ending
        silent = ending is not None and not written.strip()
        if silent and ending.reason == "stop-token":
            again = "" if session.settings.greedy else ", or press Enter to continue anyway"
            self._print(f"[the model ended the text at once ({ending.detail}); /min 1 makes it write at least "
                        f"one token{again}]", "note")
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
        if not self._load.done.is_set() or self._resume is not None:
            doing = "resuming the session" if self._resume is not None else "loading the model"
            return FormattedText([("", f" {self.model_label} │ {doing} … (commands work meanwhile)")])
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


def run_repl(config: Config, notices: list[str], resume=None) -> int:
    return Repl(config, notices, resume).run()
