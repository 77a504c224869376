"""The bottom toolbar: what the REPL's live state looks like in one line (model, settings, context, speed).

`create_toolbar_tokens_func` (pgcli's pattern) gives prompt_toolkit a function it calls on each
redraw; the function reads the live state and returns the formatted text, so the toolbar follows
the model loading, the session resuming and each setting without being told.  It is built of whole
fields with priorities and fitted to the terminal's width at each draw: on a narrow terminal the
least needed fields shorten or go, none is ever cut mid-value, and the token count always stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prompt_toolkit.application.current import get_app
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.styles import Style

from korepl.settings import Settings
from korepl.width import width

STYLE = Style.from_dict({
    "bottom-toolbar": "noreverse bg:ansiblack ansiwhite",
    "bottom-toolbar.warn": "bg:ansiyellow ansiblack",
})


class LiveState(Protocol):
    """What the toolbar reads; the REPL provides it.

    Read when present: `activity`, a short text of what the REPL is busy with (e.g. 'compiling…'),
    and the session's `memory_tokens`.
    """

    model_label: str
    loading: bool  # the model is still loading
    resuming: bool  # a saved session is still to be resumed
    load_error: str | None  # why the model could not be loaded, if it could not
    settings: Settings
    last_speed: float | None  # tokens a second of the last continuation

    @property
    def session(self): ...  # the Session, or None


def create_toolbar_tokens_func(state: LiveState) -> Callable[[], FormattedText]:
    """The function for PromptSession(bottom_toolbar=...): the toolbar of `state` as it is when called."""

    def get_toolbar_tokens() -> FormattedText:
        return toolbar_tokens(state)

    return get_toolbar_tokens


def toolbar_tokens(state: LiveState, columns: int | None = None) -> FormattedText:
    """The toolbar as it fits `columns` (the terminal's width now, when not given)."""
    fields, style = toolbar_fields(state)
    return FormattedText([(style, fit(fields, terminal_columns() if columns is None else columns))])


def terminal_columns() -> int:
    """The width of the terminal the running app draws on; 80 outside one (a test, a dumb output)."""
    try:
        return get_app().output.get_size().columns or 80
    except Exception:  # any output that cannot say its size: draw for the common width
        return 80


@dataclass
class Field:
    """One whole piece of the toolbar: its forms, longest first, each with its priority (higher stays longer).

    A field is never cut: when the line is too wide, the field whose current form has the lowest
    priority moves to its next shorter form, or leaves the line when it has none.
    """

    group: int  # fields of one group are joined by spaces, groups by ' │ '
    forms: tuple[str, ...]
    priorities: tuple[float, ...]


KEEP = math.inf  # the priority of a form that never goes (the token count)


def toolbar_fields(state: LiveState) -> tuple[list[Field], str]:
    """The fields the toolbar could show, and the style of the whole line."""
    model = Field(0, (state.model_label,), (100,))
    if state.loading or state.resuming:
        doing = "resuming" if state.resuming else "loading"
        what = "the session" if state.resuming else "the model"
        forms = (f"{doing} {what} … (commands work meanwhile)", f"{doing} {what} …", f"{doing} …")
        return [model, Field(1, forms, (20, 30, KEEP))], ""
    if state.load_error:
        return [Field(0, ("no model: it could not be loaded (any command says why); /quit to leave",
                          "no model (any command says why); /quit to leave", "no model; /quit to leave"),
                      (20, 30, KEEP))], "class:bottom-toolbar.warn"
    session = state.session
    notes = [Field(5, (note,), (85,))] if (note := getattr(state, "activity", None)) else []  # e.g. 'compiling…'
    if session is None:
        return [model, Field(1, ("ready",), (KEEP,)), *notes], ""
    s = state.settings
    used = len(session.ids) - session.view_start
    memory = getattr(session, "memory_tokens", 0) or 0
    count = f"mem {memory} + {used}/{session.window}" if memory > 0 else f"{used}/{session.window}"
    fields = [model, *decoding_fields(s), Field(2, (f"{count} tokens", f"{count} tok"), (60, KEEP)),
              Field(3, (f"{state.last_speed:.1f} tok/s" if state.last_speed else "– tok/s",), (50,)), *notes]
    if memory + used >= s.window_warn * session.window:  # the colour says it even when the words do not fit
        fields.append(Field(4, ("the window is nearly full", "nearly full"), (30, 90)))
        return fields, "class:bottom-toolbar.warn"
    return fields, ""


def decoding_fields(s: Settings) -> list[Field]:
    """'greedy', or the sampler with top-k and whichever of top-p and temperature are in force; then rep and max."""
    fields = [Field(1, ("greedy" if s.greedy else s.sampler,), (80,))]
    if not s.greedy:
        fields.append(Field(1, (f"top-k {s.top_k}",), (70,)))
        if s.top_p < 1:
            fields.append(Field(1, (f"top-p {s.top_p:g}",), (72,)))
        if s.temperature != 1:
            fields.append(Field(1, (f"temp {s.temperature:g}",), (75,)))
    fields += [Field(1, (f"rep {s.repetition_penalty:g}",), (40,)), Field(1, (f"max {s.max_new_tokens}",), (35,))]
    return fields


def fit(fields: list[Field], columns: int) -> str:
    """The line of `fields` at most `columns` wide, dropping or shortening whole fields, lowest priority first."""
    chosen = {id(f): 0 for f in fields}  # the index of each field's form in use
    while True:
        text = render([(f, f.forms[chosen[id(f)]]) for f in fields if id(f) in chosen])
        if width(text) <= columns:
            return text
        shown = [f for f in fields if id(f) in chosen and f.priorities[chosen[id(f)]] != KEEP]
        if not shown:  # only what is never dropped is left: show it, too wide or not
            return text
        weakest = min(shown, key=lambda f: f.priorities[chosen[id(f)]])
        if chosen[id(weakest)] + 1 < len(weakest.forms):
            chosen[id(weakest)] += 1
        else:
            del chosen[id(weakest)]


def render(shown: list[tuple[Field, str]]) -> str:
    groups: dict[int, list[str]] = {}
    for f, form in shown:
        groups.setdefault(f.group, []).append(form)
    return " " + " │ ".join(" ".join(words) for _, words in sorted(groups.items()))
