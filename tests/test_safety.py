"""The session's promises that hold after any move: the view fits the window, no special token is written."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest

from korepl import store
from korepl.session import SessionError
from benchmarks.fixtures import drain

LONG_LINE = "국회는 법률에 저촉되지 아니하는 범위안에서 의사와 내부규율에 관한 규칙을 제정할 수 있다. " * 12


def test_no_special_token_is_ever_written(demo, new_session):
    """Sampling from a flattened distribution over the whole vocabulary still never writes <unk>, <pad>, <unused…>."""
    tokenizer = demo.tokenizer
    specials = set(tokenizer.get_added_vocab().values())
    stops = {tokenizer.convert_tokens_to_ids(s) for s in ("</s>", "</d>")}
    session = new_session(demo, seed=1, temperature=10.0, top_k=4096, max_new_tokens=1000, min_new_tokens=1000)
    session.feed("대한민국")
    start = len(session.ids)
    text = drain(session.generate())
    written = set(session.ids[start:])
    assert len(session.ids) - start == 1000  # unsuppressed, this writes about a dozen <unused…>
    assert not written & (specials - stops), [tokenizer.convert_ids_to_tokens(i) for i in written & specials]
    assert "<unk>" not in text and "<unused" not in text and "<pad>" not in text


def test_peek_never_offers_a_special_token(demo, new_session):
    session = new_session(demo, temperature=5.0)
    session.feed("대한민국의 모든 국민은")
    specials = set(demo.tokenizer.get_added_vocab().values())
    stops = {demo.tokenizer.convert_tokens_to_ids(s) for s in ("</s>", "</d>")}
    offered = {c.token_id for c in session.peek(len(demo.tokenizer))}  # the whole vocabulary, likeliest first
    assert not offered & (specials - stops)
    assert len(offered) == len(demo.tokenizer) - len(specials - stops)


def test_a_newline_token_asked_for_may_be_written(demo, new_session):
    session = new_session(demo, newline="<unused0>")
    assert demo.tokenizer.convert_tokens_to_ids("<unused0>") not in session.controls.suppress_ids
    assert demo.tokenizer.convert_tokens_to_ids("<unused1>") in session.controls.suppress_ids


MOVES = ("line", "long", "generate", "undo", "redo", "retry", "alt", "edit_cut", "edit_grow", "pick", "reload")


def make_move(session, move: str, tmp_path) -> None:
    if move == "line":
        session.add_line("대한민국의 모든 국민은")
    elif move == "long":
        session.add_line(LONG_LINE)
    elif move == "generate":
        drain(session.generate())
    elif move == "undo":
        session.undo()
    elif move == "redo":
        session.redo()
    elif move == "retry":
        drain(session.retry())
    elif move == "alt":
        session.switch(1)
    elif move == "edit_cut":
        session.edit(session.text[: len(session.text) // 2])
    elif move == "edit_grow":
        session.edit(session.text + " " + LONG_LINE)
    elif move == "pick":
        drain(session.pick(2))
    elif move == "reload":
        store.save(session, tmp_path / "s.json")
        store.restore(session, store.read_file(tmp_path / "s.json"), "s.json")


@hypothesis.settings(max_examples=12, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(st.lists(st.sampled_from(MOVES), min_size=4, max_size=14))
def test_the_view_never_exceeds_the_window_after_any_move(demo, new_session, tmp_path, moves):
    session = new_session(demo, seed=3, max_new_tokens=24, stop=())
    for move in moves:
        try:
            make_move(session, move, tmp_path)
        except SessionError:
            pass  # nothing to undo, no alternative: a refused move changes nothing
        assert len(session.ids) - session.view_start <= session.window, (move, moves)
        assert session.text == session.turn.text() and session.ids == session.turn.ids()


@pytest.mark.parametrize("move", ["edit_grow", "long"])
def test_a_long_edit_or_paste_leaves_the_view_inside_the_window(demo, new_session, tmp_path, move):
    session = new_session(demo, seed=3)
    session.add_line("대한민국")
    for _ in range(8):
        make_move(session, move, tmp_path)
    assert len(session.ids) > 2 * session.window
    assert len(session.ids) - session.view_start <= session.window


def test_peek_on_an_empty_text_changes_nothing(demo, new_session):
    session = new_session(demo)
    assert session.peek(3)
    assert session.ids == [] and session.text == "" and session.turn is session.root


def test_a_fixed_seed_makes_the_session_reproducible_yet_retries_differ(demo, new_session):
    def run():
        session = new_session(demo, seed=7, max_new_tokens=12, stop=())
        session.add_line("대한민국의 모든 국민은")
        first = drain(session.generate())
        return session, first, drain(session.retry())

    session, first, second = run()
    assert first != second  # a retry is another draw, not a copy
    assert run()[1:] == (first, second)  # and the same seed replays the same session
