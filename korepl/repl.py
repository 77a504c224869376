"""The read loop: each line (or triple-quote block) to a command or the text; autosave; leaving whole.

This module owns the REPL's state (settings, the session once the model has loaded, a resume)
and its loop: the prompt shows at once while the model loads on a background thread (commands work
meanwhile); keys typed between prompts wait for the next prompt, which takes them as if typed there
(korepl.terminal); every line read goes through korepl.textin before it is used.  After every line
the session is saved (korepl.journal); SIGTERM and SIGHUP save and leave, and an internal error
saves, writes a crash report and carries on.  What is printed between prompts (continuations,
Ctrl+C, the spinner) is korepl.printer's; the toolbar is korepl.toolbar's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import merge_styles

from korepl import commands, journal, paths, printer, store, textin, toolbar
from korepl.controls import readable
from korepl.errors import UserError
from korepl.loading import DEMO_MODEL_DIR, ModelUnavailable
from korepl.printer import say
from korepl.settings import Config, SettingError, Settings
from korepl.terminal import BusyTerminal, InterruptGuard, replay
from korepl.width import clip, width

BLOCK = '"""'
ESCAPED_SLASH = "//"
TYPED_AHEAD_NOTE = "[running the line typed while korepl was busy]"
# Internal errors in a row after which korepl leaves (the loop itself is broken, not one command).
MAX_CRASHES_IN_A_ROW = 3
COMPILE_AFTER_IDLE = 10.0  # seconds at the prompt, with no continuation yet, before the step compiles
COMPILE_THREAD = "korepl-compile"  # korepl.compiled names its thread so (imported only with the model)


class Hangup(BaseException):
    """SIGTERM or SIGHUP: the session is saved and korepl leaves (not an Exception: nothing may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def label_of(source: str) -> str:
    """How the toolbar and messages name a model: "demo" for the shipped one, else as the user gave it."""
    return "demo" if Path(source) == DEMO_MODEL_DIR else source


class BackgroundLoad:
    """Loads the model on a thread so the prompt can show at once."""

    def __init__(self, config: Config):
        self.config = config  # what it loads (its model, device, precision)
        self.loaded = None
        self.error: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self._thread.start()

    def _run(self, config: Config) -> None:
        source = config.model
        try:
            from korepl.backend import load

            self.loaded = load(config)  # here, or (with a backend) the tokenizer and the probed server
            if config.compile != "off" and self.loaded.remote is None:
                from korepl import paths
                from korepl import compiled

                # Started by the REPL once the writer is idle (Repl._compile_when_idle), not here: compiling
                # beside the first continuation made launch-to-first-token 1.7x as long.
                self.loaded.compiled = compiled.for_model(self.loaded.model, self.loaded.device, config.compile,
                                                          paths.inductor_cache_dir(), self.loaded.ops,
                                                          self.loaded.window)
        except ModelUnavailable as exc:
            self.error = str(exc)
        except UserError as exc:  # a server that cannot be used, an api_key_command that failed
            self.error = f"korepl: {exc}"
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
    """The REPL's state (what commands and the toolbar read) and its read loop."""

    def __init__(self, config: Config, notices: list[str], resume=None):
        self._settings = config.decoding  # until the session exists; then the session owns them
        self._chosen = set(config.chosen)  # settings the user set (file, flags, commands): they beat a resume
        self.model_label = label_of(config.model)
        self._load = BackgroundLoad(config)
        self._switch: BackgroundLoad | None = None  # a model /model asked for, loading beside the one in use
        self.config = config
        self._session = None
        self._quit = False
        self._printer = printer.Printer()  # streams continuations
        self.last_speed: float | None = None  # tokens a second of the last continuation (the toolbar shows it)
        self._toolbar = toolbar.create_toolbar_tokens_func(self)
        self._notices = list(notices)  # printed before the next prompt
        if config.backend and config.insecure:
            from korepl.backend import INSECURE_WARNING

            self._notices.append(INSECURE_WARNING)
        self._resume = resume
        self._load_error_shown = False
        self._compile_timer: threading.Timer | None = None
        self._prompt: PromptSession | None = None  # set by run()
        self._terminal = BusyTerminal()  # between prompts: keys typed meanwhile wait for the next prompt
        self.journal = journal.Journal(paths.sessions_dir(), config.keep_sessions)
        self._hangup = 0  # the SIGTERM or SIGHUP that came, if one did
        self._save_error_shown: str | None = None

    # --- the state commands and the toolbar see ---------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force, read live: the session's once it exists (one owner), before that the REPL's."""
        return self._session.settings if self._session is not None else self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        old = dataclasses.asdict(self.settings)
        if self._session is not None:
            self._session.settings = value  # may refuse (SettingError): then nothing changes
        else:
            self._settings = value
        self._chosen |= {name for name, item in dataclasses.asdict(value).items() if old[name] != item}

    @property
    def session(self):
        """The Session, or None while the model loads (or could not be loaded)."""
        return self._session

    @property
    def load_error(self) -> str | None:
        return self._load.error

    @property
    def loading(self) -> bool:
        return not self._load.done.is_set()

    @property
    def resuming(self) -> bool:
        return self._resume is not None

    def model_settings(self) -> list[tuple[str, str]]:
        """The rows /settings shows above the decoding settings: the model, and the file this run saves to."""
        loaded = self._load.loaded
        in_effect = f"{loaded.precision} ({loaded.precision_note})" if loaded else "(the model is loading)"
        model = self.model_label
        if self._switch is not None:
            model += f" (loading {label_of(self._switch.config.model)} to switch to)"
        backend = "(none: the model runs here)"
        if loaded is not None and loaded.remote is not None:
            from korepl.backend import server_label

            backend = server_label(loaded) + (" (TLS not checked)" if self.config.insecure else "")
        elif self.config.backend:
            backend = self.config.backend
        compiled = "(the model is loading)" if loaded is None else "not used (the model runs on the server)" \
            if loaded.remote is not None else loaded.compiled.describe() if loaded.compiled is not None else "off"
        return [("model", model), ("backend", backend), ("device", loaded.where if loaded else self.config.device),
                ("dtype", self.config.dtype), ("quantize", self.config.quantize), ("precision", in_effect),
                ("compile", f"{self.config.compile}: {compiled}"), ("session file", self._session_file())]

    @property
    def activity(self) -> str | None:
        """What the toolbar notes beside the speed: the compiled step while it is being made, and once in use."""
        loaded = self._load.loaded
        state = loaded.compiled.state if loaded is not None and loaded.compiled is not None else None
        return {"compiling": "compiling…", "compiled": "compiled"}.get(state)

    # --- switching the model (/model) ---------------------------------------------------------------

    def model_facts(self) -> list[tuple[str, str]]:
        """The rows of /show info: the loaded model's size and shape, and where it runs."""
        from korepl import stats

        if self._load.loaded is None:
            raise commands.CommandError(self._load.error or "the model is still loading; try again in a moment")
        return stats.model_facts(self._load.loaded, self.settings.threads)

    def current_model(self) -> str:
        """What /model shows: the model in use, and one being loaded to replace it."""
        loaded = self._load.loaded
        line = f"model: {self.model_label}"
        if loaded and loaded.name != self.model_label:
            line += f" ({loaded.name})"
        if self._switch is not None:
            line += f"; loading {label_of(self._switch.config.model)} to switch to"
        return line

    def switch_model(self, source: str) -> str:
        """Load `source` in the background; the writer keeps writing on the old model until it is ready.

        A folder that is missing or incomplete is refused at once (ModelUnavailable, nothing changes);
        a load that fails later is said before a prompt, and the old model stays.
        """
        from korepl.loading import check_source

        source = str(DEMO_MODEL_DIR) if source == "demo" else source
        if not self.config.backend:  # with a backend only the tokenizer loads: the server's probe checks the rest
            check_source(source)
        return self._switch_to(dataclasses.replace(self.config, model=source))

    def current_backend(self) -> str:
        """What /backend shows: the server the model runs on, or that it runs here."""
        loaded = self._load.loaded
        if loaded is not None and loaded.remote is not None:
            from korepl.backend import server_label

            line = f"backend: {server_label(loaded)}"
        else:
            line = f"backend: {self.config.backend or 'none (the model runs here)'}"
        if self._switch is not None:
            line += f"; switching to {self._switch.config.backend or 'the model run here'}"
        return line

    def switch_backend(self, url: str) -> str:
        """/backend URL|off: the same model's tokenizer with another server, or the model run here.

        Loaded (probed) in the background as /model does; the writer keeps writing meanwhile.  A bad
        address is refused at once (RemoteError, nothing changes).
        """
        from korepl.remote import normalize

        url = "" if url.strip().lower() in ("off", "none", "local") else normalize(url)
        if not url:
            from korepl.loading import check_source

            check_source(self.config.model)  # the weights must be here to run it here
        return self._switch_to(dataclasses.replace(self.config, backend=url))

    def _switch_to(self, config: Config) -> str:
        """Load `config`'s model (here or on its backend) in the background, then switch to it between turns."""
        label = label_of(config.model) + (f" on {config.backend}" if config.backend else "")
        if self._load.loaded is None:  # no model in use (still loading, or it failed): this one replaces it
            self._load, self._load_error_shown = BackgroundLoad(config), False
            self.config, self.model_label = config, label_of(config.model)
            return f"loading {label} …"
        self._switch = BackgroundLoad(config)
        return f"loading {label} in the background; the text stays with {self.model_label} meanwhile"

    def _take_switched_model(self) -> None:
        """Once a /model load is done: a new session on it, holding the writer's text re-encoded."""
        pending = self._switch
        if pending is None or not pending.done.is_set():
            return
        self._switch = None
        label = label_of(pending.config.model)
        if pending.loaded is not None and pending.loaded.remote is not None:
            from korepl.backend import server_label

            label += f" on {server_label(pending.loaded)}"
        elif pending.config.backend != self.config.backend:
            label += " (run here)"
        if pending.error:
            self._notices.append(f"{pending.error} (still writing with {self.model_label})")
            self._print_notices()
            return
        with InterruptGuard() as guard, guard.shield():  # never half switched
            old, before = self._session, (self._load, self.config, self.model_label, self._settings)
            if old is not None:
                self._settings = old.settings
            self._load, self.config, self.model_label = pending, pending.config, label_of(pending.config.model)
            try:
                session = self._carry_text(self._new_session(), old.text) if old is not None else None
            except SettingError as exc:  # a setting no fallback fixes (a memory too long for its window)
                self._load, self.config, self.model_label, self._settings = before
                self._notices.append(f"korepl: cannot switch to {label}: {exc}; still writing with {self.model_label}")
                self._print_notices()
                return
            if old is not None:
                self._save()  # the old model's text stays in its own file
            self.journal.start_new_file()
            self._session, self.last_speed = session, None
            self._printer.forget_session()
            if session is not None:
                self._notices.append(f"now writing with {label}: the text ({len(session.ids)} tokens with its "
                                     "tokenizer) is kept; undo history starts here")
            else:
                self._notices.append(f"now writing with {label}")
        self._print_notices()

    @staticmethod
    def _carry_text(session, text: str):
        """`session` holding `text` as the root of a new turn tree (ids from its own tokenizer)."""
        from korepl import turns

        if text:
            ids = session.encode(session.model_text(text))
            root = turns.Turn("start", None, 0, tuple(ids), 0, text)  # nothing to undo before it
            session.replace_state(session.settings, root, root, 0)  # the view slides if the text outgrows it
        return session

    def _session_file(self) -> str:
        if self.journal.path is None:
            return "(none yet: the first text makes it)"
        return f"{self.journal.path}{' (it cannot be written)' if self._save_error_shown else ''}"

    def reset(self) -> None:
        """/reset, /clear: the text is cleared as a turn of the session, so /undo brings it back and the
        same file keeps it; the settings stay.  SessionError when the text is already empty."""
        if self._session is not None:
            self._session.reset()
            self.last_speed = None

    def quit(self) -> None:
        self._quit = True

    # --- the session ----------------------------------------------------------------------------

    def ensure_session(self):
        """Make the session once the model has loaded (resuming a saved one if asked); the session or None.

        Ctrl+C waits until the session is made (then stops what asked for it), so a resume is never
        left half done, and the toolbar never says it is resuming when it is not.
        """
        self._take_switched_model()  # between turns only: never under a continuation
        if self._session is None and self._load.loaded is not None:
            with InterruptGuard() as guard, guard.shield():
                session = self._new_session()
                if self._resume is not None:
                    self._restore(session, self._resume)
                self._session, self._resume = session, None
            self._print_notices()
        return self._session

    def _new_session(self):
        from korepl.session import MemoryTooLong, Session  # loaded with the model, not before the prompt shows

        if self._load.loaded.remote is not None:  # what the server cannot honour is turned off, and said
            from korepl.backend import supported

            self._settings, notes = supported(self._load.loaded, self._settings)
            self._notices.extend(notes)
        try:
            return Session(self._load.loaded, self._settings)
        except MemoryTooLong as exc:  # a memory (config, flag) longer than half this model's window
            self._notices.append(f"korepl: {exc}; starting with no memory")
            self._settings = dataclasses.replace(self._settings, memory="")
            return self._new_session()
        except SettingError as exc:  # newline or mode asked for tokens this model lacks
            self._notices.append(f"korepl: {exc}; using newline auto and mode write")
            self._settings = dataclasses.replace(self._settings, newline="auto", mode="write")
            return Session(self._load.loaded, self._settings)

    def _restore(self, session, resume) -> None:
        """Continue a saved session: its settings, then over them every setting the user chose.

        So the order is: saved session < user config < flags < commands typed while it loaded.
        """
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
        self._notices.append(f"resumed {resume.path}: {len(session.ids)} tokens; the text ends: "
                             f"{session.readable(session.text)[-60:]}")

    def _print_notices(self) -> None:
        while self._notices:
            say(self._notices.pop(0), "note")

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        prompt = make_prompt(self._toolbar)
        say(f"korepl: writing with {self.model_label}. /help lists the commands; Ctrl+D leaves.", "note")
        hint = None if self._resume is not None else last_session_hint(paths.sessions_dir())
        if hint:
            say(hint, "note")
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
            except KeyboardInterrupt:  # one that came between a turn's parts (its save, say): on to the prompt
                continue
            except Exception as exc:  # korepl's own fault: save, report, carry on
                crashes += 1
                self._crashed(exc)
                if crashes >= MAX_CRASHES_IN_A_ROW:
                    say("korepl keeps failing and leaves; your session is saved.", "error")
                    return

    def _turn(self, prompt: PromptSession) -> None:
        """One prompt and what the line asks for; the session is saved after it, whatever happened."""
        try:
            with self._terminal:
                if self._load.done.is_set() and not self._load.error:
                    self.ensure_session()  # once loaded: make the session (and resume) before the next prompt
                elif self._load.error and not self._load_error_shown:
                    say(self._load.error, "error")
                    self._load_error_shown = True
                self._print_notices()
                self._save()
                self._compile_when_idle()
            line = self._read(prompt, self._terminal.take_typed_ahead())
        except KeyboardInterrupt:
            return  # Ctrl+C at the prompt clears the line (or, before it, waited for the session to be made)
        if self._hangup:
            raise Hangup(self._hangup)
        if line is None:
            return
        try:
            with self._terminal:
                self._handle(line)
        except KeyboardInterrupt:  # during a command's own model run (a /peek after /load, say)
            say("[stopped]", "note")
        finally:
            self._save()

    def _compile_when_idle(self) -> None:
        """Start compiling the step at the first prompt after a continuation, or after the writer has sat at the
        prompt for COMPILE_AFTER_IDLE seconds: never beside the first continuation, which it would slow."""
        loaded = self._load.loaded
        compiled = loaded.compiled if loaded is not None and self._load.done.is_set() else None
        if compiled is None or compiled.started:
            return
        if self._session is not None and self._session.last_stats is not None:
            compiled.start()
        elif self._compile_timer is None or self._compile_timer.finished.is_set():
            def start_if_at_prompt() -> None:
                if self._prompt is not None and self._prompt.app.is_running:
                    compiled.start()

            self._compile_timer = threading.Timer(COMPILE_AFTER_IDLE, start_if_at_prompt)
            self._compile_timer.daemon = True
            self._compile_timer.start()

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
            say(TYPED_AHEAD_NOTE, "note")
        if line.lstrip().startswith(BLOCK):
            line = read_block(prompt, line.lstrip()[len(BLOCK):])
        clean = textin.from_str(line, "the line")  # a legacy terminal's CP949, stray control keys
        if clean.note:
            say(f"[{clean.note}]", "note")
        return None if line and not clean.text else clean.text

    def _handle(self, line: str) -> None:
        self.ensure_session()
        if line.startswith(ESCAPED_SLASH):  # '//text' is text that starts with a slash, not a command
            self._write(line[1:])
        elif commands.is_command(line) and "\n" not in line:
            reply = commands.run_command(self, line)
            for number, each in enumerate(reply.lines):
                say(each, "error" if reply.error else reply.styles[number] if number < len(reply.styles) else "")
            if reply.stream is not None:
                self.last_speed = self._printer.continuation(self.session, reply.stream, self.settings.probs)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        if self._session is None and not printer.wait_for_model(self._load):
            return
        session = self.ensure_session()
        if line:
            added = session.add_line(line)
            if added > session.window:
                say(f"[the text is {len(session.ids)} tokens, more than the model's window of "
                    f"{session.window}: all of it is kept, and the model sees the most recent part]", "note")
        self.last_speed = self._printer.continuation(session, session.generate(), self.settings.probs)

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
            say(f"[{clean.note}]", "note")
        edited = clean.text
        edited = edited[:-1] if edited.endswith("\n") and not text.endswith("\n") else edited  # editors add one
        return None if edited == text else edited

    # --- saving, crashing, leaving ---------------------------------------------------------------

    def _save(self) -> None:
        """Save the session if it changed; a failure is said once (until it changes), never raised."""
        problem = self.journal.save(self._session)
        if problem and problem != self._save_error_shown:
            say(problem, "error")
        self._save_error_shown = problem

    def _crashed(self, exc: Exception) -> None:
        """An internal error: the session is saved first, the traceback goes to a file, one paragraph here."""
        with contextlib.suppress(Exception):
            self._save()
        report = journal.write_crash_report(exc)
        where = f"the details are in {report}" if report else "no crash report could be written"
        saved = f"your session is saved in {self.journal.path}" if self.journal.path else "nothing was lost"
        say(f"korepl hit an internal error ({type(exc).__name__}) and carries on; {saved}; {where}. "
            "Please send that file with a bug report.", "error")

    def _leave(self) -> None:
        """On the way out (Ctrl+D, /quit, SIGTERM, SIGHUP): save, say where, give the terminal back."""
        with contextlib.suppress(Exception):
            if self._session is None or self._consistent(self._session):
                self._save()
        self._terminal.close()  # the shell gets its terminal back as it was
        if self.journal.path is not None and self._save_error_shown is None:
            with contextlib.suppress(Exception):  # the terminal may be gone (SIGHUP)
                say(f"saved to {self.journal.path}; korepl --resume continues it", "note")

    @staticmethod
    def _consistent(session) -> bool:
        """False if a signal cut a move short mid-way: then the last saved state is kept instead."""
        return session.text == session.turn.text() and session.ids == session.turn.ids()


def read_block(prompt: PromptSession, body: str) -> str:
    """A triple-quote block: `body` (what followed the opening quotes) and lines until the closing ones, as one text."""
    lines = []
    while BLOCK not in body:
        lines.append(body)
        with patch_stdout():
            body = prompt.prompt("... ")
    lines.append(body[: body.index(BLOCK)])
    return "\n".join(lines).strip("\n")


def make_prompt(bottom_toolbar) -> PromptSession:
    return PromptSession(
        history=open_history(),
        auto_suggest=AutoSuggestFromHistory(),
        completer=CommandCompleter(),
        complete_while_typing=True,
        key_bindings=key_bindings(),
        bottom_toolbar=bottom_toolbar,
        refresh_interval=0.5,  # the toolbar notices when the model is ready
        style=merge_styles([printer.STYLE, toolbar.STYLE]),
    )


class CleanFileHistory(FileHistory):
    """The history file, holding each line as korepl takes it (korepl.textin), not as the terminal sent it.

    prompt_toolkit keeps a line as it read it and writes it with errors='replace': a CP949 line
    (its bytes read as surrogate escapes) would be kept as '??'.  Each line is still appended to
    the file on its own, as FileHistory does, so two korepl processes on one file keep both's lines.
    """

    def append_string(self, string: str) -> None:
        clean = textin.from_str(string).text
        if clean and clean not in self.get_strings()[-1:]:  # not twice in a row, as prompt_toolkit does
            super().append_string(clean)


def open_history() -> History:
    """History in the user's state folder; in memory when that folder cannot be written."""
    path = paths.history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return CleanFileHistory(str(path))
    except OSError:
        return InMemoryHistory()


def run_repl(config: Config, notices: list[str], resume=None) -> int:
    status = Repl(config, notices, resume).run()
    if any(thread.name == COMPILE_THREAD and thread.is_alive() for thread in threading.enumerate()):
        # A compile cannot be stopped halfway, and Python's shutdown under it aborts the process ("terminate
        # called without an active exception").  The session is saved by now: leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def last_session_hint(folder: Path, columns: int | None = None) -> str | None:
    """One line saying that the newest saved session with text can be continued, or None when there is none.

    Fitted to the terminal's width (`columns`), so it stays one line; never raises.
    """
    try:
        path = store.latest_with_text(folder)
        data = store.read_file(path) if path is not None else None
    except (store.StoreError, OSError):
        return None
    text, ids = (data.get("text"), data.get("ids")) if isinstance(data, dict) else (None, None)
    if not isinstance(text, str) or not text.strip() or not isinstance(ids, list):
        return None
    # A file's text is shown only cleaned (no terminal codes) and as the writer reads it (no chat markup).
    words = " ".join(textin.CONTROL.sub("", textin.ESCAPE_SEQUENCE.sub("", readable(text))).split())
    head, tail = f"your last session ({len(ids)} tokens, '", "') can be continued: korepl --resume"
    columns = shutil.get_terminal_size().columns if columns is None else columns
    room = max(8, min(40, columns - 1 - width(head + tail)))
    return head + clip(words, room) + tail
