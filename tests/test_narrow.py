"""Narrow terminals and display width: the toolbar keeps whole fields and its token count at any width,
and /settings, /alt and /help line their columns up by display width (Hangul takes two columns)."""

from __future__ import annotations

import dataclasses
import re
import shutil
from types import SimpleNamespace

import pytest

from korepl import commands, toolbar
from korepl.loading import DEMO_MODEL_DIR
from korepl.repl import Repl
from korepl.settings import load_defaults
from korepl.width import width
from test_repl_pty import ANSI, Terminal

WIDTHS = (40, 60, 80, 120)
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def make_repl(model: str = str(DEMO_MODEL_DIR)) -> Repl:
    repl = Repl(dataclasses.replace(load_defaults(), model=model, device="cpu"), [])
    assert repl._load.done.wait(60) and repl._load.error is None
    assert repl.ensure_session() is not None
    return repl


@pytest.fixture(scope="module")
def repl():
    return make_repl()


def run(repl, *lines: str) -> None:
    for line in lines:
        reply = commands.run_command(repl, line)
        assert not reply.error, reply.lines
        for _ in reply.stream or ():  # a continuation is written as it is read
            pass


def bar(state, columns: int) -> str:
    return "".join(text for _, text in toolbar.toolbar_tokens(state, columns))


def split_whole(group: str, known: set[str]) -> list[str] | None:
    """`group` as a sequence of whole texts from `known` joined by spaces, or None if it is not one."""
    if group in known:
        return [group]
    for text in known:
        if group.startswith(text + " "):
            rest = split_whole(group[len(text) + 1:], known)
            if rest is not None:
                return [text, *rest]
    return None


SETTINGS_CASES = {
    "temp 0.7": ("/temp 0.7",),
    "top-p and temp": ("/topp 0.9", "/temp 0.7"),
    "greedy": ("/greedy",),
    "big max": ("/sample softmax", "/max 4096", "/topk 40"),
    "memory": ("/memory 대한민국 헌법 전문", "/temp 0.7"),
}


@pytest.mark.parametrize("case", SETTINGS_CASES)
def test_toolbar_shows_whole_fields_and_always_the_count(repl, case):
    repl.settings = load_defaults().decoding  # each case from the defaults (the memory too)
    run(repl, *SETTINGS_CASES[case])
    repl.session.feed("대한민국의 모든 국민은")
    repl.last_speed = 123.45
    s, session = repl.settings, repl.session
    used, memory = len(session.ids) - session.view_start, session.memory_tokens
    count = f"mem {memory} + {used}/1024" if memory else f"{used}/1024"
    assert (memory > 0) == (case == "memory")
    # Every text a field may show, written out here from the settings (not read from korepl.toolbar).
    known = {"demo", "greedy", "softmax", f"top-k {s.top_k}", f"top-p {s.top_p:g}", f"temp {s.temperature:g}",
             f"rep {s.repetition_penalty:g}", f"max {s.max_new_tokens}", f"{count} tokens", f"{count} tok",
             "123.5 tok/s"}
    for columns in WIDTHS:
        text = bar(repl, columns)
        assert width(text) <= columns, (columns, text)
        assert text.startswith(" ")
        shown = [split_whole(group, known) for group in text[1:].split(" │ ")]
        assert None not in shown, (columns, text)  # a group that is not whole fields: something was cut
        flat = [field for group in shown for field in group]
        assert f"{count} tokens" in flat or f"{count} tok" in flat, (columns, text)
        if columns == 120:  # room for everything: nothing is left out
            assert f"{count} tokens" in flat and "123.5 tok/s" in flat and f"max {s.max_new_tokens}" in flat
            assert s.temperature == 1 or f"temp {s.temperature:g}" in flat
            assert s.top_p == 1 or f"top-p {s.top_p:g}" in flat
        if len(flat) > 1:  # the model name is the last field to go
            assert flat[0] == "demo", (columns, text)
    assert len(bar(repl, 40)) < len(bar(repl, 120))  # narrow really did leave fields out


def test_a_nearly_full_window_warns_in_colour_and_in_as_many_words_as_fit(repl):
    repl.settings = load_defaults().decoding
    run(repl, "/set window_warn 0.5")
    repl.session.feed("대한민국의 모든 국민은 법 앞에 평등하다. " * 60)
    used = len(repl.session.ids) - repl.session.view_start
    assert used >= 512
    for columns in WIDTHS:
        ((style, text),) = toolbar.toolbar_tokens(repl, columns)
        assert style == "class:bottom-toolbar.warn" and width(text) <= columns
        assert f"{used}/1024 tok" in text
        assert "full" not in text or text.endswith(("│ the window is nearly full", "│ nearly full")), text
    assert bar(repl, 120).endswith("│ the window is nearly full")
    assert bar(repl, 60).endswith("│ nearly full")


def test_a_hangul_model_label_fits_by_display_width(tmp_path, monkeypatch):
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "한국어모델")
    monkeypatch.chdir(tmp_path)
    hangul = make_repl("한국어모델")
    assert hangul.model_label == "한국어모델"
    run(hangul, "/temp 0.7")
    seen = set()
    for columns in range(20, 100):
        text = bar(hangul, columns)
        assert width(text) <= columns or text.strip() == "0/1024 tok", (columns, text)
        assert "0/1024 tok" in text
        assert "temp" not in text or "temp 0.7" in text
        seen.add("한국어모델" in text)
    assert seen == {True, False}  # shown where it fits, left out where it does not


def test_the_other_toolbar_forms_fit_40_columns():
    base = dict(model_label="한국어모델", loading=False, resuming=False, load_error=None,
                settings=load_defaults().decoding, last_speed=None, session=None)
    states = {"loading": {"loading": True}, "resuming": {"resuming": True},
              "error": {"load_error": "no such folder"}, "ready": {}}
    for name, change in states.items():
        state = SimpleNamespace(**{**base, **change})
        wide, narrow = bar(state, 120), bar(state, 40)
        assert width(narrow) <= 40, (name, narrow)
        for word in {"loading": "loading", "resuming": "resuming", "error": "no model", "ready": "ready"}[name],:
            assert word in narrow and word in wide
    assert "(commands work meanwhile)" in bar(SimpleNamespace(**{**base, "loading": True}), 120)
    activity = SimpleNamespace(**{**base, "activity": "compiling…"})
    assert "compiling…" in bar(activity, 120) and width(bar(activity, 20)) <= 20


class AnsweringTerminal(Terminal):
    """A Terminal that answers the cursor-position requests, so that prompt_toolkit draws the toolbar.

    (Terminal sets PROMPT_TOOLKIT_NO_CPR=1; without CPR prompt_toolkit never knows the height below
    the cursor and hides the bottom toolbar.)
    """

    def until(self, pattern: str, timeout: int = 60) -> str:
        parts = []
        while self.child.expect([r"\x1b\[6n", pattern], timeout=timeout) == 0:
            parts.append(self.child.before)
            self.child.send("\x1b[1;1R")  # the cursor is on the top row: the whole screen is below it
        parts.append(self.child.before)
        text = ANSI.sub("", "".join(parts))
        self.log += text
        return text


def test_toolbar_at_40_columns_in_a_real_terminal(tmp_path):
    term = AnsweringTerminal(tmp_path, dimensions=(24, 40), extra_env={"PROMPT_TOOLKIT_NO_CPR": "0"})
    try:
        term.run("/temp 0.7")
        term.run("대한민국의 모든 국민은")
        after = term.run("/context")  # begins with the toolbar drawn for the prompt after the continuation
        used = int(re.search(r"(\d+) tokens in the text", after).group(1))
        assert used > 5
        bars = [line.split("> /")[0].rstrip() for line in after.splitlines() if " │ " in line]
        assert bars, after
        for line in bars:
            assert re.search(rf"\b{used}/1024 tok", line), line
            assert width(line) <= 40, line
            assert "temp" not in line or "temp 0.7" in line, line
        assert not re.search(r"temp 0(?!\.7)", term.log)  # never a value cut short anywhere on screen
        assert "temp 0.7" in term.log  # before the continuation the line had room for it
    finally:
        term.close() if term.child.isalive() else None


def test_settings_values_start_in_one_display_column(tmp_path, monkeypatch):
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "한국어모델")
    monkeypatch.chdir(tmp_path)
    hangul = make_repl("한국어모델")
    run(hangul, "/memory 대한민국 헌법")
    rows = hangul.model_settings() + hangul.settings.describe()
    lines = commands.run_command(hangul, "/settings").lines
    assert len(lines) == len(rows)
    offsets = {width(line) - width(value) for line, (_, value) in zip(lines, rows)}
    assert len(offsets) == 1, lines
    assert sum(bool(HANGUL.search(value)) for _, value in rows) >= 2  # the model and the memory


def test_alternatives_start_in_one_display_column(repl):
    repl.settings = load_defaults().decoding
    run(repl, "/max 4")
    repl.session.feed("대한민국의 모든 국민은")
    for _ in repl.session.generate():
        pass
    for _ in range(10):
        run(repl, "/retry")
    lines = commands.run_command(repl, "/alt").lines
    assert len(lines) == 11  # past 9, so the numbers have two digits
    starts = {width(re.match(r"[* ] *\d+\. ", line).group()) for line in lines}
    assert starts == {5}, lines  # '*' or ' ', the number right-aligned in two columns, '. '
    assert sum(bool(HANGUL.search(line)) for line in lines) >= 5


def test_long_hangul_alternative_is_clipped_by_display_width(repl):
    repl.settings = load_defaults().decoding
    run(repl, "/max 80")
    repl.session.feed("대한민국의 모든 국민은")
    for _ in repl.session.generate():
        pass
    run(repl, "/retry")
    lines = commands.run_command(repl, "/alt").lines
    assert any(HANGUL.search(line) and line.endswith("…") for line in lines), lines
    assert all(width(line) <= 4 + 60 for line in lines), lines


def test_help_reference_keeps_its_column():
    # The README generator prints these lines: the help text starts at column 29 as it always has.
    for line, command in zip(commands.reference(), commands.COMMANDS, strict=True):
        usage = f"/{command.name} {command.syntax}".rstrip()
        assert line == usage + " " * max(0, 28 - len(usage)) + " " + command.help
