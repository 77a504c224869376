"""Exploring: undo/redo, retry and alternatives, peek and pick, save and load, chat mode, edit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers.generation.logits_process import SuppressTokensLogitsProcessor

from korepl import sampling, store
from korepl.session import SessionError
from benchmarks.fixtures import drain


def fresh_logits(loaded, new_session, text):
    session = new_session(loaded)
    session.feed(text)
    return session.next_logits()


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture
def written(demo, new_session):
    """Two typed lines, each continued."""
    session = new_session(demo, seed=3, max_new_tokens=15)
    session.add_line("대한민국의 모든 국민은")
    drain(session)
    session.add_line("국가는 전통문화의 계승·발전과")
    drain(session)
    return session


def test_undo_crops_without_running_the_model_and_redo_restores(demo, new_session, written):
    session = written
    final_text, final_ids = session.text, list(session.ids)
    final_logits = session.next_logits().clone()
    runs = session.tokens_run
    states = []
    for _ in range(3):  # the continuation, the line, the first continuation
        session.undo()
        states.append(session.text)
        logits = session.next_logits()
        assert session.tokens_run == runs  # cropped, not rebuilt: no model run at all
        close(logits, fresh_logits(demo, new_session, session.text))
        assert session.ids == session.encode(session.model_text(session.text))
    assert states[1] == final_text[: final_text.index("\n국가는")] and states[2] == "대한민국의 모든 국민은"
    for _ in range(3):
        session.redo()
    assert session.text == final_text and session.ids == final_ids
    close(session.next_logits(), final_logits)
    with pytest.raises(SessionError, match="nothing to redo"):
        session.redo()


def test_undo_at_the_start_is_refused(demo, new_session):
    with pytest.raises(SessionError, match="nothing to undo"):
        new_session(demo).undo()


def test_retry_keeps_alternatives_and_switching_restores_the_exact_text(demo, new_session, written):
    session = written
    before = session.turn.parent.text()
    versions = [session.text]
    for seed in (11, 12):
        session.settings = dataclasses.replace(session.settings, seed=seed)
        drain(session.retry())
        versions.append(session.text)
    assert len(set(versions)) == 3 and all(v.startswith(before) for v in versions)
    assert [t.text() for t in session.alternatives()] == versions
    for number in (1, 3, 2):
        session.switch(number)
        assert session.text == versions[number - 1]
        close(session.next_logits(), fresh_logits(demo, new_session, session.text))
    with pytest.raises(SessionError, match="choose 1 to 3"):
        session.switch(4)


def test_peek_matches_a_direct_forward_pass_and_pick_appends_it(demo, new_session, written):
    session = written
    text, runs_before = session.text, session.ids[:]
    candidates = session.peek(5)
    assert session.text == text and session.ids == runs_before  # peek changes nothing
    with torch.inference_mode():
        logits = demo.model(torch.tensor([session.ids])).logits[0, -1].float()
    # HF SuppressTokensLogitsProcessor semantics: every special token but the stops (</s>, </d>) is never written.
    stops = {demo.tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "</d>")}
    suppressed = sorted(set(demo.tokenizer.get_added_vocab().values()) - stops)
    logits = SuppressTokensLogitsProcessor(suppressed, device="cpu")(torch.tensor([session.ids]), logits[None])[0]
    expected = torch.softmax(sampling.apply_repetition_penalty(logits, torch.tensor(session.ids), 2.0), dim=-1)
    top = torch.topk(expected, 5)
    assert [c.token_id for c in candidates] == top.indices.tolist()
    close(torch.tensor([c.probability for c in candidates]), top.values)
    assert candidates[0].probability >= candidates[-1].probability
    length = len(session.ids)
    shown = drain(session.pick(3))
    assert session.ids[length] == candidates[2].token_id
    picked_text = session.decode(session.ids[: length + 1])[len(session.decode(session.ids[:length])):]
    assert shown.startswith(picked_text) and session.text == text + shown


def test_save_load_continue_gives_the_same_logits_and_settings(demo, new_session, written, tmp_path):
    session = written
    session.settings = dataclasses.replace(session.settings, top_k=3, ban=("법률",), seed=99)
    path = tmp_path / "s.json"
    store.save(session, path)
    loaded = new_session(demo)
    store.restore(loaded, store.read_file(path), str(path))
    assert loaded.settings == session.settings
    assert (loaded.text, loaded.ids, loaded.view_start) == (session.text, session.ids, session.view_start)
    close(loaded.next_logits(), session.next_logits())
    assert drain(loaded) == drain(session)  # the same seed continues the same way
    loaded.undo()  # the turn tree came along
    assert [t.kind for t in loaded.turn._chain()][:3] == ["start", "typed", "generated"]


def test_save_load_after_a_slide(demo, new_session, tmp_path):
    session = new_session(demo, max_new_tokens=20, seed=1)
    session.add_line("모든 국민은 법률이 정하는 바에 의하여 국방의 의무를 진다. " * 90)
    drain(session)
    assert session.view_start > 0
    store.save(session, tmp_path / "slid.json")
    loaded = new_session(demo)
    store.restore(loaded, store.read_file(tmp_path / "slid.json"), "slid.json")
    assert loaded.view_start == session.view_start
    close(loaded.next_logits(), session.next_logits())


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "version", "other-model", "bad-ids"])
def test_a_bad_file_is_refused_and_the_session_is_untouched(demo, kogpt2_shaped, new_session, written, tmp_path,
                                                           damage):
    good = tmp_path / "good.json"
    store.save(written, good)
    bad = tmp_path / "bad.json"
    raw = good.read_text(encoding="utf-8")
    data = json.loads(raw)
    if damage == "truncated":
        bad.write_text(raw[: len(raw) // 2], encoding="utf-8")
    elif damage == "garbage":
        bad.write_bytes(b"\x00\xff" * 100)
    elif damage == "foreign":
        bad.write_text('{"messages": []}')
    elif damage == "version":
        bad.write_text(json.dumps(dict(data, version=99)))
    elif damage == "other-model":
        other = new_session(kogpt2_shaped)
        other.feed("다른 모델")
        store.save(other, bad)
    else:
        data["ids"][3] = 10**9
        bad.write_text(json.dumps(data))
    target = new_session(demo, top_k=7)
    target.add_line("그대로 있어야 할 문장")
    before = (target.text, list(target.ids), target.settings, target.next_logits().clone())
    with pytest.raises(store.StoreError) as caught:
        store.restore(target, store.read_file(bad), str(bad))
    assert "bad.json" in str(caught.value) and "\n" not in str(caught.value)
    assert (target.text, target.ids, target.settings) == before[:3]
    close(target.next_logits(), before[3])


KILLED_WRITER = """
import json, sys
from korepl import store
path, padding = sys.argv[1], int(sys.argv[2])
data = store.read_file(path)
data["padding"] = "가" * padding
while True:
    store.write(path, data)
"""


def test_a_save_killed_midway_leaves_the_previous_file_loadable(demo, new_session, written, tmp_path):
    path = tmp_path / "s.json"
    store.save(written, path)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(40_000_000)])
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob(".s.json.*.tmp")) and time.time() < deadline:
            time.sleep(0.01)
        assert list(tmp_path.glob(".s.json.*.tmp")), "the writer never started a save"
        time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # a real kill, in the middle of writing
    finally:
        child.wait(30)
    data = store.read_file(path)  # still whole: either the first save or a complete later one
    loaded = new_session(demo)
    store.restore(loaded, data, str(path))
    assert loaded.text == written.text


def test_edit_reruns_only_the_changed_tail(demo, new_session, written):
    session = written
    session.next_logits()
    runs = session.tokens_run
    new_text = session.text[:-6] + " 바꾼 끝"
    rerun = session.edit(new_text)
    assert 0 < rerun < len(session.ids) // 3
    session.next_logits()
    assert session.tokens_run - runs == rerun
    assert session.text == new_text
    close(session.next_logits(), fresh_logits(demo, new_session, new_text))
    session.undo()  # an edit is a turn like any other
    assert session.text != new_text


def test_chat_mode_wraps_lines_and_stops_at_end_of_text(demo, new_session):
    session = new_session(demo, mode="chat", stop=(), max_new_tokens=40, seed=5)
    session.add_line("안녕하세요")
    usr, sys_ = demo.tokenizer.convert_tokens_to_ids(["<usr>", "<sys>"])
    assert session.ids[:1] == [usr] and session.ids[-1] == sys_
    assert 1 in session.controls.stop_ids  # </s> ends an answer even with no stops configured
    drain(session)
    assert 1 not in session.ids


def test_a_session_fed_without_turns_saves_and_loads(demo, new_session, tmp_path):
    session = new_session(demo)
    session.feed("한 번에 넣은 글")  # feed alone, as one-shot mode and scripts do: no turn recorded
    store.save(session, tmp_path / "fed.json")
    loaded = new_session(demo)
    store.restore(loaded, store.read_file(tmp_path / "fed.json"), "fed.json")
    assert (loaded.text, loaded.ids) == (session.text, session.ids)


def test_a_text_longer_than_the_window_not_yet_run_saves_and_loads(demo, new_session, tmp_path):
    session = new_session(demo)
    session.add_line("모든 국민은 법률이 정하는 바에 의하여 국방의 의무를 진다. " * 90)
    assert len(session.ids) > demo.window and session.tokens_run == 0  # not run yet
    assert 0 < len(session.ids) - session.view_start <= demo.window  # yet the view already fits the window
    store.save(session, tmp_path / "long.json")
    loaded = new_session(demo)
    store.restore(loaded, store.read_file(tmp_path / "long.json"), "long.json")
    close(loaded.next_logits(), session.next_logits())


def test_chat_mode_closes_each_answer_with_end_of_text(demo, new_session):
    session = new_session(demo, mode="chat", max_new_tokens=10, seed=5)
    session.add_line("안녕하세요")
    drain(session)
    session.add_line("반갑습니다")
    usr = demo.tokenizer.convert_tokens_to_ids("<usr>")
    second = len(session.ids) - 1 - session.ids[::-1].index(usr)
    assert session.ids[second - 1] == 1  # </s> ends the first answer before the next <usr>


def test_recording_a_turn_never_rebuilds_a_turn_from_the_root(demo, new_session, monkeypatch):
    """A turn is stored as what changed since the current one, which the session tracked: O(the change)."""
    from korepl import turns

    session = new_session(demo, seed=5, max_new_tokens=6, stop=())
    session.add_line("대한민국의 모든 국민은")
    drain(session)
    recorded = {}

    def refuse(*_):
        raise AssertionError("a turn's whole state was rebuilt")

    monkeypatch.setattr(turns.Turn, "ids", refuse)
    monkeypatch.setattr(turns.Turn, "text", refuse)
    for line in ("국가는", "헌법개정은 국회재적의원"):
        session.add_line(line)
        recorded[session.turn] = (list(session.ids), session.text)
        drain(session)
        recorded[session.turn] = (list(session.ids), session.text)
    session.feed("또는")  # joins inside the last word: its tokens are re-encoded
    session.checkpoint()
    recorded[session.turn] = (list(session.ids), session.text)
    session.edit(session.text[:-8] + " 바꾼 끝")
    recorded[session.turn] = (list(session.ids), session.text)
    monkeypatch.undo()
    assert len(recorded) == 6
    for turn, state in recorded.items():
        assert (turn.ids(), turn.text()) == state
    assert session.ids == session.encode(session.model_text(session.text))


def test_the_model_fact_the_pty_stop_test_relies_on(demo, new_session):
    """test_repl_pty's 'a turn that ends at once' needs greedy's first token after 제1조 to be '▁①'."""
    session = new_session(demo, greedy=True)
    session.feed("제1조")
    assert session.peek(1)[0].token == "▁①"
