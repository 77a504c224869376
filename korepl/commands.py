"""The slash commands: one table (COMMANDS) drives the parser, /help, Tab completion and the README's list.

A handler takes the REPL's state and the raw argument text and returns a Reply; a bad argument is a
CommandError whose message says what is allowed, and nothing changes.  `run_command` never raises
for anything the user types.  Nothing here knows about prompt_toolkit.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from korepl import paths, store
from korepl.controls import readable
from korepl.errors import UserError
from korepl.settings import FIELDS, FIELDS_BY_NAME, SAMPLERS, Settings


class State(Protocol):
    """What commands may read and change; the REPL provides it."""

    settings: Settings
    load_error: str | None  # why the model could not be loaded, if it could not

    @property
    def session(self): ...  # the Session, or None while the model is still loading (or failed to)

    def reset(self) -> None: ...

    def quit(self) -> None: ...

    def edit_text(self, text: str) -> str | None: ...  # the text after the user's editor, None if unchanged

    def model_settings(self) -> list[tuple[str, str]]: ...  # model, device, dtype, quantize, precision

    def model_facts(self) -> list[tuple[str, str]]: ...  # /show info's rows; CommandError while none is loaded

    def current_model(self) -> str: ...  # one line: the model in use (and one loading to replace it)

    def switch_model(self, source: str) -> str: ...  # start loading another model; ModelUnavailable if it cannot

    def current_backend(self) -> str: ...  # one line: the server the model runs on, or that it runs here

    def switch_backend(self, url: str) -> str: ...  # start switching to a server (or "off"); RemoteError if bad


class CommandError(UserError):
    """A bad argument: the message says what is allowed."""


@dataclass(frozen=True)
class Reply:
    lines: tuple[str, ...] = ()
    error: bool = False
    stream: Iterator[Any] | None = None  # a continuation for the REPL to show (from /retry, /pick)
    styles: tuple[str, ...] = ()  # a printer style per line ("note" is dim); lines past these are plain


def info(*lines: str) -> Reply:
    return Reply(tuple(lines))


@dataclass(frozen=True)
class Command:
    name: str
    syntax: str  # what follows the name, e.g. "N" or "add|del|list TEXT"
    help: str  # one line, shown by /help and in the completion menu
    run: Callable[[State, str], Reply]
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = field(default=())  # first-argument words offered by Tab


# --- settings ----------------------------------------------------------------------------------


def _set_field(state: State, name: str, raw: Any) -> Reply:
    state.settings = state.settings.with_value(name, raw)
    return info(f"{name} = {FIELDS_BY_NAME[name].show(getattr(state.settings, name))}")


def _field_command(name: str) -> Callable[[State, str], Reply]:
    def run(state: State, args: str) -> Reply:
        if not args:
            if FIELDS_BY_NAME[name].is_switch:  # a bare /greedy or /probs turns it on
                return _set_field(state, name, "on")
            field_ = FIELDS_BY_NAME[name]
            return info(f"{name} = {field_.show(getattr(state.settings, name))}  ({field_.help})")
        return _set_field(state, name, args)

    return run


def _sample(state: State, args: str) -> Reply:
    if not args:
        raise CommandError("usage: /sample softmax|uniform")
    state.settings = state.settings.with_values({"sampler": args, "greedy": False})
    return info(f"sampler = {state.settings.sampler}", "greedy = off")


OLLAMA_NAMES = {f.ollama: f.name for f in FIELDS if f.ollama}


def _set(state: State, args: str) -> Reply:
    words = args.split(maxsplit=1)
    if words and words[0] == "parameter":  # Ollama's form: /set parameter top_k 5
        words = words[1].split(maxsplit=1) if len(words) > 1 else []
    if len(words) != 2:
        raise CommandError("usage: /set NAME VALUE (names: " + ", ".join(_settable_names()) + ")")
    name, value = words
    target = OLLAMA_NAMES.get(name, name)
    if target not in FIELDS_BY_NAME:
        raise CommandError(f"unknown setting '{name}'" + _did_you_mean(name, _settable_names()))
    if FIELDS_BY_NAME[target].is_list:
        if target == "stop_keep":
            raise CommandError("use /stop keep TEXT, /stop del TEXT or /stop list for stop_keep")
        command = FIELDS_BY_NAME[target].command
        raise CommandError(f"use /{command} add|del|list TEXT for {target}")
    return _set_field(state, target, value)


def _settable_names() -> list[str]:
    return [f.name for f in FIELDS if not f.is_list] + [n for n in OLLAMA_NAMES if n not in FIELDS_BY_NAME]


def _show_settings(state: State, args: str) -> Reply:
    from korepl.width import ljust, width

    rows = state.model_settings() + state.settings.describe()
    column = max(width(name) for name, _ in rows)  # by display width, so every value starts in one column
    return info(*(f"{ljust(name, column)}  {value}" for name, value in rows))


def _show(state: State, args: str) -> Reply:
    if args in ("", "settings"):  # Ollama's /show lists the model; korepl's bare /show stays the settings
        return _show_settings(state, "")
    if args != "info":
        raise CommandError("usage: /show info (the model's size and shape) or /show settings")
    rows = state.model_facts()
    width = max(len(name) for name, _ in rows)
    return info(*(f"{name:<{width}}  {value}" for name, value in rows))


def _model(state: State, args: str) -> Reply:
    if not args:
        return info(state.current_model())
    return info(state.switch_model(args))


def _backend(state: State, args: str) -> Reply:
    if not args:
        return info(state.current_backend())
    return info(state.switch_backend(args))


def _stats(state: State, args: str) -> Reply:
    from korepl import stats

    figures = stats.of(state.session) if state.session is not None else None
    if figures is None or figures.total_seconds is None:
        return info("no continuation yet: /stats shows the figures of the last one")
    return info(*figures.lines())


def _list_command(name: str) -> Callable[[State, str], Reply]:
    """add|del|list for a setting that is a list of texts (stop, ban); /stop also keeps (stop_keep)."""
    field_ = FIELDS_BY_NAME[name]
    actions = ("add", "keep", "del") if name == "stop" else ("add", "del")

    def run(state: State, args: str) -> Reply:
        action, _, text = args.partition(" ")
        text = text.strip()
        items = getattr(state.settings, name)
        if action == "list" and not text:
            return info(_stop_lists(state.settings) if name == "stop" else f"{name} = {field_.show(items)}")
        if action not in actions or not text:
            raise CommandError("usage: " + ", ".join(f"/{field_.command} {a} TEXT" for a in actions) +
                               f" or /{field_.command} list")
        if name == "stop":
            return _stop_change(state, action, text)
        if action == "add":
            if text in items:
                return info(f"'{text}' is already in {name}")
            return _set_field(state, name, items + (text,))
        if text not in items:
            raise CommandError(f"'{text}' is not in {name}; it holds: {field_.show(items)}")
        return _set_field(state, name, tuple(s for s in items if s != text))

    return run


def _stop_lists(settings: Settings) -> str:
    show = FIELDS_BY_NAME["stop"].show
    return f"hidden: {show(settings.stop)}; kept: {show(settings.stop_keep)}"


def _stop_change(state: State, action: str, text: str) -> Reply:
    """/stop add (hidden: generation stops before it), keep (stops after it, and it stays), del (from either).

    A text is in one list at most: adding it to one takes it from the other.
    """
    hidden, kept = state.settings.stop, state.settings.stop_keep
    if action == "del":
        if text not in hidden and text not in kept:
            raise CommandError(f"'{text}' is not in stop or stop_keep ({_stop_lists(state.settings)})")
    elif text in (hidden if action == "add" else kept):
        return info(f"'{text}' is already in {'stop' if action == 'add' else 'stop_keep'} "
                    f"({_stop_lists(state.settings)})")
    elif action == "keep" and state.session is not None and text in state.session.vocab.added:
        raise CommandError(f"'{text}' is a special token, which is never shown, so it cannot be kept: "
                           f"/stop add {text} stops at it")
    state.settings = state.settings.with_values({
        "stop": tuple(s for s in hidden if s != text) + ((text,) if action == "add" else ()),
        "stop_keep": tuple(s for s in kept if s != text) + ((text,) if action == "keep" else ()),
    })
    show = FIELDS_BY_NAME["stop"].show  # the settings' own names, as every setting command replies
    return info(f"stop = {show(state.settings.stop)}; stop_keep = {show(state.settings.stop_keep)}")


# --- the session ---------------------------------------------------------------------------------


def _needs_session(state: State):
    if state.session is None:
        if state.load_error:
            raise CommandError(state.load_error)
        raise CommandError("the model is still loading; try again in a moment")
    return state.session


def _context(state: State, args: str) -> Reply:
    session = _needs_session(state)
    used, memory = len(session.ids) - session.view_start, session.memory_tokens
    header = f"{len(session.ids)} tokens in the text; the model sees the last {used} of its {session.window}"
    if memory:
        header = (f"{len(session.ids)} tokens in the text; the model sees {memory} of memory, then the last {used} "
                  f"({memory + used} of its {session.window})")
    text = session.readable(session.text)
    if session.view_start > 0:  # mark where the model's view begins, counting back from the end
        start = max(0, len(session.text) - len(session.decode(session.ids[session.view_start:])))
        # Each side made readable alone: the mark's place is counted in the text with its markup.
        text = session.readable(session.text[:start]) + VIEW_MARK + session.readable(session.text[start:])
    lines = [header, text if text else "(the text is empty)"]
    if memory:  # first, as the model reads it
        lines.insert(1, f"{MEMORY_MARK.format(memory)}{session.readable(session.settings.memory)}")
    return info(*lines)


VIEW_MARK = "[▸ the model sees from here] "
MEMORY_MARK = "[memory: {} tokens] "


def _memory(state: State, args: str) -> Reply:
    if args in ("", "show"):
        memory, session = state.settings.memory, state.session
        if not memory:
            return info("no memory: /memory TEXT gives the model a text it sees first, however long the writing grows")
        count = f"{session.memory_tokens} tokens" if session is not None else "counted once the model has loaded"
        return info(f"memory ({count}), seen first by the model:", memory)
    new = "" if args == "clear" else args
    if new == state.settings.memory:
        return info("the memory is unchanged" if new else "there is no memory to clear")
    state.settings = state.settings.with_value("memory", new)  # SettingError if too long: nothing changes
    session = state.session
    if session is None:  # its length is checked against the window once the model has loaded
        return info("memory set; the model will see it first once it has loaded")
    what = f"memory = {session.memory_tokens} tokens, seen first" if new else "memory cleared"
    return info(f"{what}; the model re-reads only what changed ({session.pending} tokens)")


def _reset(state: State, args: str) -> Reply:
    session = _needs_session(state)
    if not session.text and not session.ids:
        return info("the text is cleared (it was already empty); settings are kept")
    state.reset()  # a turn of the session's own: undoable, and saved in the same file
    return info("the text is cleared (/undo brings it back); settings are kept")


def _tail(text: str, width: int = 40) -> str:
    if not text:
        return "(nothing: the text is empty)"
    text = readable(text).replace("\n", " ⏎ ")  # chat markup read as the screen shows it
    return "…" + text[-width:] if len(text) > width else text


def _head(text: str, width: int = 40) -> str:
    text = readable(text).strip().replace("\n", " ⏎ ")
    return text[:width] + "…" if len(text) > width else text


def _undo(state: State, args: str) -> Reply:
    session = _needs_session(state)
    undone = session.undo()
    what = {"generated": "continuation", "typed": "line", "picked": "picked token", "edited": "edit"}.get(
        undone.kind, undone.kind)
    taken = f" '{_head(undone.new_text)}'" if undone.new_text.strip() else ""
    return info(f"took back the {what}{taken}; the text now ends: {_tail(session.text)}")


def _redo(state: State, args: str) -> Reply:
    session = _needs_session(state)
    redone = session.redo()
    if redone.kind == "reset":
        return info("cleared the text again (/undo brings it back)")
    return info(f"brought back '{_head(redone.new_text)}'; the text now ends: {_tail(session.text)}")


def _retry(state: State, args: str) -> Reply:
    session = _needs_session(state)
    return Reply(stream=session.retry())


def _alt(state: State, args: str) -> Reply:
    session = _needs_session(state)
    if args:
        number = _whole_number(args, "usage: /alt to list the alternatives, /alt N to switch to one")
        chosen = session.switch(number)
        return info(f"alternative {number}: the text now ends: {_tail(session.text)}", chosen.new_text)
    options = session.alternatives()
    if not options:
        return info("no alternatives here yet: /retry writes one")
    from korepl.width import clip

    digits = len(str(len(options)))  # numbers right-aligned, so the texts start in one column past 9
    return info(*(f"{'*' if t is session.turn else ' '}{n:>{digits}}. "
                  f"{clip(t.new_text.strip().replace(chr(10), ' ⏎ '), 60)}"  # 60 columns, Hangul counted double
                  for n, t in enumerate(options, 1)))


def _tree(state: State, args: str) -> Reply:
    import shutil

    from korepl import tree

    session = _needs_session(state)
    columns = shutil.get_terminal_size().columns
    return info(tree.legend(session.root), *tree.draw(session.root, session.turn, columns))


def _goto(state: State, args: str) -> Reply:
    from korepl import tree

    session = _needs_session(state)
    last = tree.size(session.root) - 1
    usage = f"usage: /goto N, a turn number from /tree (0 to {last})"
    number = _whole_number(args, usage)
    target = tree.find(session.root, number)
    if target is None:
        raise CommandError(f"no turn {number}: the turns are numbered 0 to {last} (see /tree)")
    session.visit(target)
    return info(f"at turn {number} ({target.kind}); the text now ends: {_tail(session.text)}")


def _export(state: State, args: str) -> Reply:
    from korepl import export

    session = _needs_session(state)
    target, alternatives = args, False
    if target.endswith(" alts"):  # the file name may hold spaces; "alts" is the last word
        target, alternatives = target[: -len(" alts")].rstrip(), True
    if not target:
        raise CommandError("usage: /export FILE.txt, /export FILE.md or /export FILE.md alts")
    return info(export.export(session, target, alternatives))


# /peek's columns: "NNN. " then the chance, then the token, then the model's probability (40 columns in all).
PEEK_TOKEN_COLUMNS = 16


def _peek(state: State, args: str) -> Reply:
    from korepl.width import clip, ljust, rjust

    session = _needs_session(state)
    count = _whole_number(args, "usage: /peek [K], K from 1 to 100") if args else 5
    if not 1 <= count <= 100:
        raise CommandError("usage: /peek [K], K from 1 to 100")
    lines, styles = ["     chance of being picked now  model p"], ["note"]
    outside = ""
    for n, c in enumerate(session.peek(count), 1):
        if c.outside and c.outside != outside:  # a new group of tokens a pick never takes now: say why
            outside = c.outside
            lines.append(f"     outside {outside}: not picked")
            styles.append("note")
        token = ljust(clip(c.text, PEEK_TOKEN_COLUMNS), PEEK_TOKEN_COLUMNS)  # by display width: Hangul takes 2
        lines.append(f"{rjust(str(n), 3)}. {c.chance:7.2%}  {token}  {c.probability:7.2%}")
        styles.append("note" if c.outside else "")
    return Reply(tuple(lines), styles=tuple(styles))


def _pick(state: State, args: str) -> Reply:
    session = _needs_session(state)
    number = _whole_number(args, "usage: /pick N, a number from the /peek list")
    if not 1 <= number <= 100:
        raise CommandError("usage: /pick N, a number from the /peek list (1 to 100)")
    return Reply(stream=session.pick(number))


def _save(state: State, args: str) -> Reply:
    session = _needs_session(state)
    path = Path(args).expanduser() if args else paths.sessions_dir() / time.strftime("session-%Y%m%d-%H%M%S.json")
    store.save(session, path)
    return info(f"saved to {path}")


def _load(state: State, args: str) -> Reply:
    session = _needs_session(state)
    if not args:
        raise CommandError("usage: /load FILE")
    try:
        store.restore(session, store.read_file(Path(args).expanduser()), args)
    except store.StoreError as exc:
        raise CommandError(f"{exc}; the current session is unchanged") from None
    return info(f"loaded {args}: {len(session.ids)} tokens; the text ends: {_tail(session.text)}")


def _sessions(state: State, args: str) -> Reply:
    from korepl import journal

    return info(*journal.listing(paths.sessions_dir()))


def _edit(state: State, args: str) -> Reply:
    session = _needs_session(state)
    new_text = state.edit_text(session.text)
    if new_text is None:
        return info("no change")
    rerun = session.edit(new_text)
    return info(f"the text is updated; the model re-reads only its last {rerun} tokens")


def _whole_number(text: str, usage: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError(usage) from None


def _quit(state: State, args: str) -> Reply:
    state.quit()
    return info()


def _help(state: State, args: str) -> Reply:
    if args:
        command = find(args.lstrip("/"))
        if command is None:
            raise CommandError(f"no command /{args.lstrip('/')}" + _did_you_mean(args.lstrip("/"), _all_names()))
        names = ", ".join("/" + n for n in (command.name, *command.aliases))
        return info(f"/{command.name} {command.syntax}".rstrip(), f"  {command.help}", f"  names: {names}")
    lines = reference()
    lines += ["", "Type text to add it to the text and continue it; an empty line continues from where it stands.",
              'Esc then Enter starts a new line; a line of """ opens a block until the next """.',
              "Ctrl+C stops a continuation (what was written stays); Ctrl+D or /quit leaves."]
    return info(*lines)


# --- the table -----------------------------------------------------------------------------------

def _setting_command(f) -> Command:
    if f.is_list:
        if f.name == "stop":  # /stop also keeps: the stop_keep list has no command of its own
            return Command(f.command, "add|keep|del|list TEXT",
                           "stop at a text, hidden (add) or kept (keep), or at a token such as </s>",
                           _list_command(f.name), choices=("add", "keep", "del", "list"))
        return Command(f.command, "add|del|list TEXT", f.help, _list_command(f.name), choices=("add", "del", "list"))
    if f.name == "sampler":
        return Command(f.command, f.metavar, "sample again (greedy off), picking by probability or evenly", _sample,
                       choices=SAMPLERS)
    syntax = "[on|off]" if f.is_switch else f.metavar
    words = tuple(w for w in f.metavar.split("|") if w.isalpha() and w.islower())  # on, off, all, auto ...
    return Command(f.command, syntax, f.help, _field_command(f.name), choices=words)


COMMANDS: tuple[Command, ...] = (
    *(_setting_command(f) for f in FIELDS if f.command),
    Command("set", "NAME VALUE", "change any setting; Ollama's /set parameter top_k 5 works too", _set,
            choices=("parameter", *_settable_names())),
    Command("settings", "", "show every setting", _show_settings),
    Command("show", "[info|settings]", "info: the model's size, shape, precision and device; settings (bare): "
            "every setting", _show, choices=("info", "settings")),
    Command("model", "[NAME|PATH]", "switch to another model (hub id or folder); the text stays. Bare: which "
            "model is in use", _model),
    Command("backend", "[URL|off]", "run the model on a serving engine (llama-server, vLLM) or, off, here; the "
            "text stays. Bare: where it runs", _backend, choices=("off",)),
    Command("stats", "", "timings and token counts of the last continuation, as Ollama's --verbose", _stats),
    Command("undo", "", "take back the last continuation; again, the line before it", _undo),
    Command("redo", "", "bring back what /undo took", _redo),
    Command("retry", "", "write the last continuation again; the old one stays an alternative", _retry),
    Command("alt", "[N]", "list the alternatives of this continuation, or switch to number N", _alt),
    Command("tree", "", "draw the tree of turns: every line, continuation and alternative, numbered", _tree),
    Command("goto", "N", "go to turn N of /tree; the model re-reads only what differs", _goto),
    Command("export", "FILE [alts]", "write the text to FILE.txt, or FILE.md with the memory (alts: footnotes)",
            _export),
    Command("peek", "[K]", "show the next-token candidates and their chance of being picked now (changes nothing)", _peek),
    Command("pick", "N", "append candidate N from /peek and continue from it", _pick),
    Command("edit", "", "open the whole text in $EDITOR; the model re-reads only what changed", _edit),
    Command("save", "[FILE]", "save the session (text, turns, settings) as JSON", _save),
    Command("load", "FILE", "load a saved session", _load),
    Command("sessions", "", "list the saved sessions: file, date, tokens, first words", _sessions),
    Command("context", "", "show the whole text and how much of it the model sees", _context),
    Command("memory", "TEXT|show|clear", "a text the model always sees first, however long the writing grows",
            _memory, choices=("show", "clear")),
    Command("reset", "", "clear the text and start over (settings stay; /undo brings it back)", _reset,
            aliases=("clear",)),
    Command("help", "[COMMAND]", "list the commands, or explain one", _help, aliases=("?",)),
    Command("quit", "", "leave korepl", _quit, aliases=("exit", "bye")),
)

_BY_NAME = {name: c for c in COMMANDS for name in (c.name, *c.aliases)}


def _all_names() -> list[str]:
    return list(_BY_NAME)


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else ""


def find(name: str) -> Command | None:
    return _BY_NAME.get(name)


def is_command(line: str) -> bool:
    return line.startswith("/")


def run_command(state: State, line: str) -> Reply:
    """Run one slash-command line.  Never raises for what the user typed."""
    name, _, args = line[1:].strip().partition(" ")
    command = find(name)
    if command is None:
        if not name:
            return Reply(("type /help for the commands",), error=True)
        suggestion = _did_you_mean(name, _all_names())
        return Reply((f"unknown command /{name}" + suggestion.replace("did you mean ", "did you mean /"),),
                     error=True)
    try:
        return command.run(state, args.strip())
    except UserError as exc:  # the one place a user's mistake becomes a message
        return Reply((str(exc),), error=True)


def reference() -> list[str]:
    """One line per command: the /help list, and the README's (python -m korepl.commands prints it)."""
    from korepl.width import ljust

    return [f"{ljust(('/' + c.name + ' ' + c.syntax).rstrip(), 28)} {c.help}" for c in COMMANDS]


if __name__ == "__main__":
    print("\n".join(reference()))
