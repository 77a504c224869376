"""Memory: a premise the model sees first however far the window slides (llama.cpp's n_keep, KoboldAI's memory).

The reference for every cache check is one full forward pass over memory + the view of the text.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from benchmarks.fixtures import drain
from conftest import full_forward_logits
from korepl import commands, sampling, store
from korepl.settings import SettingError

from test_commands import SessionState
from test_repl_pty import Terminal

PREMISE = "주인공 민수는 서울의 작은 서점에서 일한다. 그는 비 오는 날을 좋아한다."
LONG = " ".join(["대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다."] * 60)  # more than the window
CLAUSE = "국회는 법률에 저촉되지 아니하는 범위안에서 의사와 내부규율에 관한 규칙을 제정할 수 있다. "


def assert_sees_memory_first(session) -> None:
    """The model's view starts with the memory, and the cached logits equal a fresh pass over memory + view."""
    memory = session.context.memory
    seen = session.context.seen()
    assert memory and seen[:len(memory)] == memory and seen[len(memory):] == session.ids[session.view_start:]
    assert len(seen) <= session.window
    expected = full_forward_logits(session.loaded, seen)
    assert torch.allclose(session.next_logits(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["demo", "kogpt2_shaped"])
def test_after_slides_the_model_sees_memory_then_recent_text(request, new_session, runner, model):
    loaded = request.getfixturevalue(model)
    session = new_session(loaded, memory=PREMISE, window_keep=0.95, max_new_tokens=60, seed=5, stop=(), ban=())
    memory = session.context.memory
    assert 10 < session.memory_tokens == len(memory) <= loaded.window // 2
    session.next_logits()  # an empty text: the model reads the memory alone
    assert session.tokens_run == len(memory)
    session.feed(LONG)  # a paste over the window: the first slide
    session.next_logits()
    # The memory's positions did not move, so its cache stayed: only the new view ran.
    assert session.tokens_run == len(memory) + len(session.ids) - session.view_start
    assert_sees_memory_first(session)
    assert session.slides == 1
    # A slide keeps the most recent `keep` share of the room the memory leaves.
    assert len(session.ids) - session.view_start == int((loaded.window - len(memory)) * 0.95)
    drain(session)  # 60 tokens, more than the 5 % left: the second slide, during generation
    assert session.slides == 2
    assert_sees_memory_first(session)
    session.feed(" " + CLAUSE * 8)
    drain(session)
    assert session.slides >= 3
    assert_sees_memory_first(session)


def test_cache_stays_right_through_crops_undo_and_truncate(demo, new_session, runner):
    session = new_session(demo, memory=PREMISE, window_keep=0.9, max_new_tokens=30, seed=2, stop=(), ban=())
    session.add_line("그날 아침")
    drain(session)
    assert_sees_memory_first(session)
    session.undo()  # the continuation: cropped, logits recalled
    assert_sees_memory_first(session)
    session.redo()
    assert_sees_memory_first(session)
    session.add_line(LONG)  # past the window: the view slides, the memory stays
    drain(session)
    assert session.slides >= 1
    session.undo()  # back over the slide: the view no longer reaches that far
    assert_sees_memory_first(session)
    session.undo()
    assert_sees_memory_first(session)
    before = session.tokens_run
    session.context.truncate(len(session.ids) - 7)
    assert_sees_memory_first(session)
    assert session.tokens_run - before == 1  # the crop kept memory + view up to there: only the last id re-ran
    session.context.truncate(0)  # nothing of the text left: the model sees the memory alone
    assert_sees_memory_first(session)


def test_memory_change_reruns_only_what_changed(demo, new_session, runner):
    session = new_session(demo, max_new_tokens=20, seed=3, stop=())
    session.feed("그날 아침 민수는 서점 문을 열었다.")
    session.next_logits()
    view = len(session.ids)

    def change(memory: str) -> int:
        """Set the memory; how many tokens the model ran for it (checked against a fresh pass)."""
        old, before = session.context.seen(), session.tokens_run
        session.settings = dataclasses.replace(session.settings, memory=memory)
        new = session.context.seen()
        shared = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        if memory:
            assert_sees_memory_first(session)
        else:
            torch.testing.assert_close(session.next_logits(), full_forward_logits(demo, new), rtol=1e-4, atol=1e-4)
        ran = session.tokens_run - before
        assert ran == len(new) - shared  # the shared prefix stayed cached
        return ran

    # Before the text: every position moves, so memory and view run, and nothing more.
    assert change(PREMISE) == session.memory_tokens + view
    # Only the last sentence differs: the first sentence's tokens stay cached.
    first = len(session.encode("주인공 민수는 서울의 작은 서점에서 일한다."))
    ran = change("주인공 민수는 서울의 작은 서점에서 일한다. 그는 눈 오는 밤을 싫어한다.")
    assert 0 < ran <= session.memory_tokens - first + view
    # The same memory again (as any other setting's change does) runs nothing and keeps the logits.
    before = session.tokens_run
    session.settings = dataclasses.replace(session.settings, top_k=7)
    session.next_logits()
    assert session.tokens_run == before
    # Cleared: the text moves back to position 0 and runs once.
    assert change("") == view and session.memory_tokens == 0


def test_logits_remembered_before_a_memory_change_are_not_reused(demo, new_session):
    session = new_session(demo, max_new_tokens=10, seed=4, stop=())
    session.add_line("그날 아침 민수는")
    drain(session)  # remembers the logits of the line's turn, read without memory
    session.settings = dataclasses.replace(session.settings, memory=PREMISE)
    session.next_logits()  # the cache holds memory + the line: undoing to the line needs no model run
    session.undo()
    assert_sees_memory_first(session)


def test_an_empty_text_continues_the_memory(demo, new_session):
    session = new_session(demo, memory=PREMISE, max_new_tokens=12, seed=6, stop=(), ban=())
    drain(session)
    assert session.ids and session.ids[0] != demo.tokenizer.bos_token_id  # no new document started
    assert_sees_memory_first(session)


def test_penalties_count_the_text_not_the_memory(demo, new_session):
    session = new_session(demo, memory=PREMISE, repetition_penalty=5.0, greedy=True, ban=(), no_repeat_ngram_size=0)
    session.feed("그날 아침")
    logits = session.next_logits()
    only_memory = [i for i in set(session.context.memory) if i not in session.ids]
    text_ids = sorted(set(session.ids))
    scores = session._pick.scores(logits, sampling.At(session.ids, session.view_start))
    assert only_memory and torch.equal(scores[only_memory], logits[only_memory])
    assert not torch.equal(scores[text_ids], logits[text_ids])  # the penalty does act on the text
    assert session.penalty_history().tolist() == session.ids[session.view_start:]


def test_too_long_memory_is_refused_and_nothing_changes(demo, new_session):
    session = new_session(demo, max_new_tokens=8, seed=1, stop=(), memory=PREMISE)
    session.feed("그날 아침")
    session.next_logits()
    before = (session.settings, list(session.context.memory), session.context.runner.cached_len, session.revision)
    too_long = (CLAUSE * 40).strip()
    tokens = len(session.encode(too_long))
    message = f"memory is {tokens} tokens; at most {demo.window // 2} (half the model's window)"
    with pytest.raises(SettingError, match=re.escape(message)):
        session.settings = dataclasses.replace(session.settings, memory=too_long)
    reply = commands.run_command(SessionState(session), "/memory " + too_long)
    assert reply.error and reply.lines == (message,)
    assert (session.settings, session.context.memory, session.context.runner.cached_len, session.revision) == before
    with pytest.raises(SettingError, match=re.escape(message)):
        new_session(demo, memory=too_long)  # --memory, or a config file's


def test_memory_command_sets_shows_and_clears(demo, new_session):
    session = new_session(demo, max_new_tokens=8, seed=1, stop=())
    session.add_line("그날 아침 민수는")
    drain(session)
    state = SessionState(session)
    assert "no memory" in commands.run_command(state, "/memory").lines[0]
    reply = commands.run_command(state, "/memory " + PREMISE)
    tokens = session.memory_tokens
    assert not reply.error and tokens > 0 and session.settings.memory == PREMISE
    assert reply.lines == (f"memory = {tokens} tokens, seen first; the model re-reads only what changed "
                           f"({tokens + len(session.ids)} tokens)",)
    assert commands.run_command(state, "/memory show").lines == (f"memory ({tokens} tokens), seen first by the model:",
                                                                 PREMISE)
    assert commands.run_command(state, "/memory").lines == commands.run_command(state, "/memory show").lines
    context = commands.run_command(state, "/context").lines
    assert "tokens in the text" in context[0] and f"{tokens} of memory" in context[0]
    assert context[1] == f"[memory: {tokens} tokens] {PREMISE}" and context[2] == session.text
    reply = commands.run_command(state, "/memory clear")
    assert reply.lines == (f"memory cleared; the model re-reads only what changed ({len(session.ids)} tokens)",)
    assert session.memory_tokens == 0 and session.settings.memory == ""
    assert commands.run_command(state, "/memory clear").lines == ("there is no memory to clear",)


def test_save_and_restore_keep_the_memory(demo, new_session, tmp_path):
    session = new_session(demo, memory=PREMISE, window_keep=0.9, max_new_tokens=40, seed=8, stop=(), ban=())
    session.add_line(LONG)
    drain(session)
    assert session.slides >= 1
    path = tmp_path / "memory.json"
    store.save(session, path)
    other = new_session(demo, max_new_tokens=40, seed=8, stop=(), ban=())
    store.restore(other, store.read_file(path), str(path))
    assert other.settings.memory == PREMISE and other.context.memory == session.context.memory
    assert (other.ids, other.view_start) == (session.ids, session.view_start)
    assert_sees_memory_first(other)
    torch.testing.assert_close(other.next_logits(), session.next_logits(), rtol=1e-4, atol=1e-4)


def test_restoring_a_memory_too_long_for_this_model_changes_nothing(demo, new_session, tmp_path):
    session = new_session(demo, max_new_tokens=8, seed=1, stop=())
    session.add_line("그날 아침")
    path = tmp_path / "long.json"
    store.save(session, path)
    data = store.read_file(path)
    data["settings"]["memory"] = CLAUSE * 40  # written by hand, or for a model with a longer window
    with pytest.raises(store.StoreError, match="memory is .* tokens; at most 512"):
        store.restore(session, data, str(path))
    assert session.settings.memory == "" and session.memory_tokens == 0


def test_memory_in_the_repl_across_slides(tmp_path):
    term = Terminal(tmp_path, "--max-new-tokens", "20", "--window-keep", "0.5", "--memory", PREMISE)
    try:
        shown = term.run("/memory")
        tokens = int(re.search(r"memory \((\d+) tokens\), seen first by the model:", shown).group(1))
        assert PREMISE in shown
        slid = 0
        for _ in range(4):  # each paste is over half the window: with keep 0.5, each after the first slides
            out = term.run(CLAUSE * 20, timeout=120)
            slid += out.count("[the window slid")
            context = term.run("/context")
            assert "tokens in the text" in context and f"{tokens} of memory" in context
            assert f"[memory: {tokens} tokens] {PREMISE}" in context
            if slid:  # memory first, then the text with the mark where the view begins
                assert context.index("[memory:") < context.index("[▸ the model sees from here]")
        assert slid >= 2
        cleared = term.run("/memory clear")
        assert "memory cleared; the model re-reads only what changed" in cleared
        assert "[memory:" not in term.run("/context")
        assert term.close() == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
