"""The command table: parser never raises, settings change only on good values, help and completion from one table."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import hypothesis
from hypothesis import given, strategies as st
from prompt_toolkit.document import Document

from korepl import commands, loading, stats
from korepl.loading import DEMO_MODEL_DIR
from korepl.repl import CommandCompleter, Repl
from korepl.settings import load_defaults

README = Path(__file__).resolve().parent.parent / "README.md"


class State:
    """The REPL's side of the commands, without a model (as while it loads)."""

    def __init__(self):
        self.settings = load_defaults().decoding
        self.session = None
        self.load_error = None
        self.resets = 0
        self.quitting = False

    def reset(self):
        self.resets += 1

    def quit(self):
        self.quitting = True

    def model_settings(self):
        return [("model", "none: commands only")]

    def model_facts(self):
        raise commands.CommandError("the model is still loading; try again in a moment")

    def current_model(self):
        return "model: none: commands only"

    def switch_model(self, source):
        raise commands.CommandError("no model can be loaded here: commands only")

    def current_backend(self):
        return "backend: none (the model runs here)"

    def switch_backend(self, url):
        raise commands.CommandError("no server can be used here: commands only")


NAMES = [name for c in commands.COMMANDS for name in (c.name, *c.aliases)]


@given(st.one_of(
    st.text(max_size=40).map(lambda t: "/" + t),
    st.tuples(st.sampled_from(NAMES), st.text(max_size=30)).map(lambda p: f"/{p[0]} {p[1]}"),
    st.tuples(st.sampled_from(["top_k", "top_p", "temperature", "repeat_penalty", "num_predict", "seed", "join",
                               "stop", "nonsense"]), st.text(max_size=12))
    .map(lambda p: f"/set parameter {p[0]} {p[1]}"),
))
def test_any_command_line_gets_a_reply_and_never_raises(line):
    state = State()
    before = state.settings
    reply = commands.run_command(state, line)
    assert isinstance(reply, commands.Reply)
    assert all(isinstance(x, str) for x in reply.lines)
    if reply.error:
        assert state.settings == before and len(reply.lines) == 1


def test_setting_commands_change_only_their_setting():
    state = State()
    assert commands.run_command(state, "/topk 3").lines == ("top_k = 3",)
    assert commands.run_command(state, "/temp 0.7").lines == ("temperature = 0.7",)
    assert commands.run_command(state, "/greedy").lines == ("greedy = on",)
    commands.run_command(state, "/sample uniform")
    assert (state.settings.greedy, state.settings.sampler) == (False, "uniform")
    commands.run_command(state, "/seed 9")
    commands.run_command(state, "/seed off")
    assert state.settings.seed is None
    expected = load_defaults().decoding
    assert (state.settings.top_k, state.settings.temperature) == (3, 0.7)
    assert state.settings.top_p == expected.top_p and state.settings.stop == expected.stop


def test_stop_add_del_list():
    state = State()
    commands.run_command(state, "/stop add 다.")
    assert state.settings.stop == ("</s>", "</d>", "다.")
    assert "다." in commands.run_command(state, "/stop list").lines[0]
    assert commands.run_command(state, "/stop del 없음").error
    commands.run_command(state, "/stop del </s>")
    assert state.settings.stop == ("</d>", "다.")
    assert commands.run_command(state, "/stop").error


def test_unknown_command_suggests_the_nearest():
    reply = commands.run_command(State(), "/settigns")
    assert reply.error and reply.lines == ("unknown command /settigns; did you mean /settings?",)


def test_quit_aliases_and_session_commands_while_loading():
    for name in ("/quit", "/exit", "/bye"):
        state = State()
        commands.run_command(state, name)
        assert state.quitting
    reply = commands.run_command(State(), "/context")
    assert reply.error and "still loading" in reply.lines[0]


def test_help_lists_every_command_from_the_table():
    text = "\n".join(commands.run_command(State(), "/help").lines)
    for command in commands.COMMANDS:
        assert f"/{command.name}" in text and command.help in text


def test_completion_offers_names_with_their_help_and_arguments():
    completer = CommandCompleter()
    found = list(completer.get_completions(Document("/to"), None))
    assert {c.text for c in found} == {"/topk", "/topp"}
    assert all(c.display_meta_text for c in found)
    assert {c.text for c in completer.get_completions(Document("/sample u"), None)} == {"uniform"}
    assert {c.text for c in completer.get_completions(Document("/stop "), None)} == {"add", "keep", "del", "list"}
    assert list(completer.get_completions(Document("대한민국"), None)) == []


def test_readme_command_list_is_the_table():
    readme = README.read_text(encoding="utf-8")
    block = readme.split("<!-- commands -->\n```\n", 1)[1].split("```\n<!-- /commands -->", 1)[0]
    assert block.splitlines() == commands.reference()
    for command in commands.COMMANDS:
        for alias in command.aliases:
            assert f"/{alias}" in readme


def test_toolbar_shows_model_settings_context_and_speed():
    repl = Repl(dataclasses.replace(load_defaults(), model=str(DEMO_MODEL_DIR), device="cpu"), [])
    assert repl._load.done.wait(60) and repl._load.error is None
    assert "".join(fragment[1] for fragment in repl._toolbar()) == " demo │ ready"
    assert repl.ensure_session() is not None  # the loop makes it once the model is there
    text = "".join(fragment[1] for fragment in repl._toolbar())
    assert text == " demo │ softmax top-k 5 rep 2 max 100 │ 0/1024 tokens │ – tok/s"
    commands.run_command(repl, "/greedy")
    repl.session.feed("대한민국의 모든 국민은")
    repl.last_speed = 123.45
    text = "".join(fragment[1] for fragment in repl._toolbar())
    assert text == f" demo │ greedy rep 2 max 100 │ {len(repl.session.ids)}/1024 tokens │ 123.5 tok/s"


def test_a_setting_the_model_refuses_changes_nothing_in_the_repl():
    repl = Repl(dataclasses.replace(load_defaults(), model=str(DEMO_MODEL_DIR), device="cpu"), [])
    assert repl._load.done.wait(60) and repl.ensure_session() is not None
    reply = commands.run_command(repl, "/newline <no-such-token>")
    assert reply.error and "not one" in reply.lines[0]
    assert repl.settings.newline == "auto" and repl.session.settings.newline == "auto"
    assert commands.run_command(repl, "/topk 3").lines == ("top_k = 3",)


class SessionState:
    """The REPL's side of the commands with a real session on the demo model: a refused setting changes nothing."""

    def __init__(self, session):
        self.session, self.load_error, self.quitting = session, None, False

    @property
    def settings(self):
        return self.session.settings

    @settings.setter
    def settings(self, value):
        self.session.settings = value

    def reset(self):
        pass

    def quit(self):
        self.quitting = True

    def edit_text(self, text):
        return text + " 그리고"

    def model_settings(self):
        return [("model", "demo")]

    def model_facts(self):
        return stats.model_facts(self.session.loaded, self.settings.threads)

    def current_model(self):
        return "model: demo"

    def switch_model(self, source):
        loading.check_source(source)  # the REPL's background load itself is tested in test_runtime.py
        return f"loading {source} …"

    def current_backend(self):
        return "backend: none (the model runs here)"

    def switch_backend(self, url):
        from korepl.remote import normalize

        return f"loading on {normalize(url)} …"  # the REPL's switch is tested in test_remote_session.py


@hypothesis.settings(max_examples=80, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.tuples(st.sampled_from(NAMES), st.text(max_size=20)).map(lambda p: f"/{p[0]} {p[1]}"),
    st.tuples(st.sampled_from(NAMES), st.integers(-3, 200)).map(lambda p: f"/{p[0]} {p[1]}"),
    st.sampled_from(NAMES).map(lambda name: "/" + name),
))
def test_any_command_line_with_a_real_session_keeps_it_whole(demo, new_session, tmp_path, line):
    """The fuzz above, with the model loaded: every command reaches the session, none breaks it."""
    session = new_session(demo, max_new_tokens=4, seed=1)
    session.add_line("대한민국의 모든 국민은")
    list(session.generate())
    state, folder = SessionState(session), os.getcwd()
    os.chdir(tmp_path)  # a /save with a random name writes here
    try:
        reply = commands.run_command(state, line)
        if reply.stream is not None:
            list(reply.stream)
    finally:
        os.chdir(folder)
        loading.apply_threads(0)  # a fuzzed /threads 200 must not slow the tests after it
    assert all(isinstance(x, str) for x in reply.lines)
    assert session.text == session.turn.text() and session.ids == session.turn.ids()
    assert len(session.ids) - session.view_start <= session.window


def test_settings_survive_a_reset():
    repl = Repl(dataclasses.replace(load_defaults(), model=str(DEMO_MODEL_DIR), device="cpu"), [])
    assert repl._load.done.wait(60) and repl.ensure_session() is not None
    commands.run_command(repl, "/ban add 있다")
    commands.run_command(repl, "/topk 7")
    commands.run_command(repl, "/reset")
    assert repl.ensure_session() is not None and repl.session.text == ""
    assert (repl.settings.ban, repl.settings.top_k) == (("있다",), 7)
    assert repl.session.settings is repl.settings
