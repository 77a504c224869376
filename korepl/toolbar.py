"""The bottom toolbar: what the REPL's live state looks like in one line (model, settings, context, speed).

`create_toolbar_tokens_func` (pgcli's pattern) gives prompt_toolkit a function it calls on each
redraw; the function reads the live state and returns the formatted text, so the toolbar follows
the model loading, the session resuming and each setting without being told.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.styles import Style

from korepl.settings import Settings

STYLE = Style.from_dict({
    "bottom-toolbar": "noreverse bg:ansiblack ansiwhite",
    "bottom-toolbar.warn": "bg:ansiyellow ansiblack",
})


class LiveState(Protocol):
    """What the toolbar reads; the REPL provides it."""

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


def toolbar_tokens(state: LiveState) -> FormattedText:
    if state.loading or state.resuming:
        doing = "resuming the session" if state.resuming else "loading the model"
        return FormattedText([("", f" {state.model_label} │ {doing} … (commands work meanwhile)")])
    if state.load_error:
        return FormattedText([("class:bottom-toolbar.warn", " no model: it could not be loaded (any command "
                                                            "says why); /quit to leave")])
    session = state.session
    if session is None:
        return FormattedText([("", f" {state.model_label} │ ready")])
    s = state.settings
    used = len(session.ids) - session.view_start
    speed = f"{state.last_speed:.1f} tok/s" if state.last_speed else "– tok/s"
    text = (f" {state.model_label} │ {decoding_mode(s)} rep {s.repetition_penalty:g} max {s.max_new_tokens} │ "
            f"{used}/{session.window} tokens │ {speed}")
    if used >= s.window_warn * session.window:
        return FormattedText([("class:bottom-toolbar.warn", text + " │ the window is nearly full")])
    return FormattedText([("", text)])


def decoding_mode(s: Settings) -> str:
    """'greedy', or the sampler with top-k and whichever of top-p and temperature are in force."""
    mode = "greedy" if s.greedy else f"{s.sampler} top-k {s.top_k}"
    if not s.greedy and s.top_p < 1:
        mode += f" top-p {s.top_p:g}"
    if not s.greedy and s.temperature != 1:
        mode += f" temp {s.temperature:g}"
    return mode
