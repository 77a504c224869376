"""Text tools: kept stop texts, the `//` escape, /clear and /? , an undoable /reset, chat markup hidden, hints."""

from __future__ import annotations

import re

import pexpect
import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from korepl import commands, store, turns
from korepl.controls import readable
from korepl.loading import DEMO_MODEL_DIR, load_tokenizer
from korepl.repl import last_session_hint
from korepl.stream import TextGate
from korepl.width import width
from test_commands import SessionState
from test_repl_pty import Terminal
from test_stream import byte_level_tokenizer

PROMPT_TEXT = "대한민국의 모든 국민은"


# --- the gate: kept and hidden stop texts ----------------------------------------------------------


TOKENIZERS = {"demo": load_tokenizer(str(DEMO_MODEL_DIR)), "byte-level": byte_level_tokenizer('국민은 법률이 정한다. 그는 말했다. "예." 다음')}
# Few letters, so that stop texts drawn from them turn up often, mid-token and across tokens.
TEXT = st.text(alphabet="다한.국민은 법률\"정", min_size=1, max_size=40)
STOPS = st.lists(st.text(alphabet="다한.국민은 법률\"정", min_size=1, max_size=3), max_size=2)


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def run_gate(tokenizer, context, new, hidden, kept):
    """Push `new`'s ids through a gate; (everything the writer keeps, the gate, the text of all of `new`, ids)."""
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    ids = tokenizer.encode(new, add_special_tokens=False)
    gate = TextGate(lambda i: decode(tokenizer, i), context_ids, hidden, kept)
    shown = ""
    for token_id in ids:
        shown += gate.push(token_id)
        if gate.stopped_by is not None:
            break
    else:
        shown += gate.finish()
    before = decode(tokenizer, context_ids)
    # The ids the caller keeps decode to exactly what was shown.
    assert decode(tokenizer, context_ids + ids[: gate.shown_ids])[len(before):] == shown
    full = decode(tokenizer, context_ids + ids)[len(before):]
    return shown + gate.stop_prefix, gate, full


@pytest.mark.parametrize("name", TOKENIZERS)
@hsettings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=TEXT, new=TEXT, hidden=STOPS, kept=STOPS)
def test_kept_stops_end_the_text_and_hidden_ones_never_show(name, context, new, hidden, kept):
    kept = [k for k in kept if k not in hidden]  # in both lists a text is hidden (controls.resolve)
    tokenizer = TOKENIZERS[name]
    text, gate, full = run_gate(tokenizer, context, new, hidden, kept)
    assert full.startswith(text)  # nothing but the model's own text, cut
    assert not any(h in text for h in hidden)
    if gate.stopped_by is None:
        assert text == full and not any(k in full for k in kept)
    elif gate.stop_kept:
        assert gate.stopped_by in kept and text.endswith(gate.stopped_by)
        # It is the first kept text to be completed: none ends earlier.
        assert not any(k in text[:-1] for k in kept)
    else:
        assert gate.stopped_by in hidden and full[len(text):].startswith(gate.stopped_by)
        assert not any(k in text for k in kept)


def test_a_kept_stop_may_be_shown_before_it_completes():
    """Text that may start a kept stop is not held back (it is shown either way), unlike a hidden one's."""
    tokenizer = TOKENIZERS["demo"]
    ids = tokenizer.encode(" 법률이 정한다", add_special_tokens=False)
    shown = {}
    for kind in ("hidden", "kept"):
        gate = TextGate(lambda i: decode(tokenizer, i), [], *((["다."], []) if kind == "hidden" else ([], ["다."])))
        shown[kind] = "".join(gate.push(i) for i in ids)
        assert gate.stopped_by is None
    assert shown["kept"].endswith("정한다") and not shown["hidden"].endswith("다")


# --- a session with kept stops ---------------------------------------------------------------------


def free_text(demo, new_session, **changes):
    free = new_session(demo, greedy=True, stop=("</s>",), max_new_tokens=40, **changes)
    free.feed(PROMPT_TEXT)
    return "".join(step.text for step in free.generate())


@pytest.mark.parametrize("keep", ["다.", "한다"])  # ends with a token; ends inside "▁한다."
def test_a_session_stops_right_after_a_kept_text_and_keeps_it(demo, new_session, tmp_path, keep):
    expected = free_text(demo, new_session)
    assert keep in expected  # the test needs the greedy text to write it
    session = new_session(demo, greedy=True, stop=("</s>",), stop_keep=(keep,), max_new_tokens=40)
    session.feed(PROMPT_TEXT)
    shown = "".join(step.text for step in session.generate())
    ending = session.last_ending
    assert (ending.reason, ending.detail, ending.kept) == ("stop-text", keep, True)
    assert shown == expected[: expected.index(keep) + len(keep)]
    assert session.text == PROMPT_TEXT + shown and session.text.endswith(keep)
    # The ids say what was shown: a fresh session over the text predicts the same next token...
    fresh = new_session(demo)
    fresh.feed(session.text)
    torch.testing.assert_close(session.next_logits(), fresh.next_logits(), rtol=1e-4, atol=1e-4)
    # ...and the store's check of every turn's text against its ids passes.
    path = tmp_path / "kept.json"
    store.save(session, path)
    restored = new_session(demo)
    store.restore(restored, store.read_file(path), str(path))
    assert restored.text == session.text and restored.ids == session.ids
    assert restored.settings.stop_keep == (keep,)


def test_a_text_both_hidden_and_kept_is_hidden(demo, new_session):
    session = new_session(demo, greedy=True, stop=("</s>", "다."), stop_keep=("다.",), max_new_tokens=40)
    session.feed(PROMPT_TEXT)
    shown = "".join(step.text for step in session.generate())
    assert session.last_ending.detail == "다." and not session.last_ending.kept and "다." not in shown


def test_stop_commands_hide_keep_delete_and_list(demo, new_session):
    state = SessionState(new_session(demo, stop=("</s>",), stop_keep=()))
    run = lambda line: commands.run_command(state, line)  # noqa: E731
    assert run("/stop keep 다.").lines == ("stop = </s>; stop_keep = 다.",)
    assert run("/stop add 다.").lines == ("stop = </s>, 다.; stop_keep = (none)",)  # moved from kept to hidden
    assert run("/stop keep 다.").lines == ("stop = </s>; stop_keep = 다.",)
    assert "already in stop_keep" in run("/stop keep 다.").lines[0]
    assert run("/stop list").lines == ("hidden: </s>; kept: 다.",)
    assert run("/stop del 다.").lines == ("stop = </s>; stop_keep = (none)",)
    assert run("/stop del </s>").lines == ("stop = (none); stop_keep = (none)",)
    before = state.settings
    for bad in ("/stop del 없는말", "/stop keep </s>", "/stop keep", "/stop take 다."):
        reply = run(bad)
        assert reply.error and len(reply.lines) == 1, bad
        assert state.settings == before, bad
    assert "/stop keep TEXT" in run("/stop").lines[0]


# --- /reset as a turn -----------------------------------------------------------------------------


def test_reset_is_a_turn_that_undo_takes_back_and_a_file_keeps(demo, new_session, tmp_path):
    session = new_session(demo, seed=3, max_new_tokens=6)
    session.add_line(PROMPT_TEXT)
    list(session.generate())
    text, ids = session.text, list(session.ids)
    reset = session.reset()
    assert (reset.kind, session.text, session.ids) == ("reset", "", [])
    assert (reset.keep_ids, reset.keep_chars, reset.new_ids, reset.new_text) == (0, 0, (), "")
    path = tmp_path / "reset.json"
    store.save(session, path)
    restored = new_session(demo)
    store.restore(restored, store.read_file(path), str(path))
    assert restored.turn.kind == "reset" and restored.text == ""
    restored.undo()
    assert (restored.text, restored.ids) == (text, ids)
    restored.redo()
    assert (restored.text, restored.ids) == ("", [])
    # A reset writes on from nothing, as a fresh session would.
    restored.add_line("국가는")
    assert restored.text == "국가는"


def test_a_reset_turn_that_keeps_or_adds_anything_is_refused(demo, new_session):
    session = new_session(demo)
    session.add_line(PROMPT_TEXT)
    session.reset()
    data = turns.to_json(session.root, session.turn)
    assert turns.from_json(data, 60000)[1].kind == "reset"
    for key, value in (("keep_ids", 1), ("keep_chars", 2), ("ids", [5]), ("text", "가")):
        bad = {"nodes": [dict(n) for n in data["nodes"]], "current": data["current"]}
        bad["nodes"][-1][key] = value
        with pytest.raises(turns.TurnError, match="reset"):
            turns.from_json(bad, 60000)


def test_reset_of_an_empty_text_changes_nothing(demo, new_session):
    state = SessionState(new_session(demo))
    reply = commands.run_command(state, "/clear")
    assert not reply.error and "already empty" in reply.lines[0]
    assert state.session.turn is state.session.root


# --- chat markup, hints -----------------------------------------------------------------------------


def test_undo_and_alt_replies_show_no_chat_markup(demo, new_session):
    session = new_session(demo, mode="chat", max_new_tokens=6, seed=2)
    session.add_line("안녕하세요")
    list(session.generate())
    assert "<usr>" in session.text  # the markup is in the text; the replies must hide it
    state = SessionState(session)
    lines = [*commands.run_command(state, "/alt").lines, *commands.run_command(state, "/undo").lines,
             *commands.run_command(state, "/undo").lines, *commands.run_command(state, "/redo").lines]
    assert lines and not any(mark in line for line in lines for mark in ("<usr>", "<sys>", "</s>"))
    assert any("> 안녕하세요" in line for line in lines)


def test_the_hint_names_the_last_session_on_one_line(demo, new_session, tmp_path):
    assert last_session_hint(tmp_path) is None  # no session: no hint
    session = new_session(demo, mode="chat")
    # A terminal code in a file's text must not reach the screen.
    session.add_line("안녕하세요 \x1b[31m반갑습니다 오늘은 날씨가 맑고 바람이 부는 날입니다")
    store.save(session, store.new_session_path(tmp_path))
    for columns in (60, 80, 200):
        hint = last_session_hint(tmp_path, columns)
        assert re.fullmatch(rf"your last session \({len(session.ids)} tokens, '> 안녕[^\n]*'\) can be "
                            r"continued: korepl --resume", hint), hint
        assert "\x1b" not in hint and "[31m" not in hint and "<usr>" not in hint
        if columns >= 80:  # narrower, the words shrink to a few characters but the sentence stays whole
            assert width(hint) < columns
    assert "> 안녕하세요 반갑습니다 오늘은" in hint and hint.count("…") == 1  # wide: more words, cut


def test_readable_hides_chat_markup():
    assert readable("<usr>안녕<sys>반가워요</s><usr>또<sys>네") == "> 안녕\n반가워요\n> 또\n네"


# --- in a terminal --------------------------------------------------------------------------------


def test_escape_clear_undo_help_hints_and_chat_in_the_repl(tmp_path):
    term = Terminal(tmp_path)
    assert "your last session" not in term.startup  # nothing saved yet
    term.run("/max 6")
    term.run("//hello")
    context = term.run("/context")
    assert "\n/hello" in context and "unknown command" not in context
    out = term.run("/clear")
    assert "the text is cleared (/undo brings it back); settings are kept" in out
    assert "(the text is empty)" in term.run("/context")
    term.run("/undo")
    assert term.run("/context") == context  # the exact text, and its tokens, are back
    help_text = term.run("/?")
    assert "list the commands" in help_text and "/reset" in help_text and "unknown command" not in help_text
    term.child.sendcontrol("d")
    term.child.expect("korepl --resume continues it", timeout=30)  # the exit line says how to continue
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()

    # A second run offers the first one's text (one note line), and its chat shows no markup.
    term = Terminal(tmp_path)
    hint = re.search(r"your last session \((\d+) tokens, '([^\n]*)'\) can be continued: korepl --resume",
                     term.startup)
    assert hint and int(hint.group(1)) > 0 and hint.group(2).startswith("/hello")
    term.run("/max 6")
    term.run("/mode chat")
    shown = [term.run("안녕하세요"), term.run("/undo"), term.run("/redo"), term.run("/context")]
    assert any("> 안녕하세요" in out for out in shown[1:])
    assert not any(mark in out for out in shown for mark in ("<usr>", "<sys>", "</s>")), shown
    assert term.close() == 0

    # --resume gets no hint; the resumed notice shows the chat without markup.
    term = Terminal(tmp_path, "--resume")
    assert "your last session" not in term.startup
    assert "resumed" in term.log and not any(mark in term.log for mark in ("<usr>", "<sys>"))
    assert term.close() == 0


def test_the_printer_says_a_kept_stop_stayed(demo, new_session, capsys):
    from korepl.printer import Printer
    from korepl.session import Ending

    session = new_session(demo)
    session.feed(PROMPT_TEXT)
    for kept, said in ((True, "the kept stop text '\\n', which stays in the text"), (False, "nothing was added")):
        session.last_ending = Ending("stop-text", "\n", 1, kept)  # a blank stop: the screen shows nothing new
        Printer()._explain_ending(session, "\n")
        out = capsys.readouterr().out
        assert said in out and ("nothing was added" in out) != kept
