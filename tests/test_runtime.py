"""Models at runtime: --verbose and /stats figures, /threads, /model switching, /show info."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.fixtures import build_kogpt2_shaped
from korepl import commands, loading, stats
from test_repl_pty import ANSI, PROMPT, Terminal
from test_commands import SessionState

PROMPT_TEXT = "대한민국의 모든 국민은"
FIGURES = ("total duration", "load duration", "prompt eval count", "prompt eval duration", "prompt eval rate",
           "time to first token", "eval count", "eval duration", "eval rate")


def figures(text: str) -> dict[str, float]:
    """'eval rate:  12.5 tokens/s' -> {'eval rate': 12.5}; durations in seconds."""
    found = {}
    for name, number, unit in re.findall(r"^([a-z ]+):\s+([0-9.]+)\s*(ms|s|token\(s\)|tokens/s)$", text, re.M):
        found[name] = float(number) / 1000 if unit == "ms" else float(number)
    return found


def test_verbose_one_shot_puts_the_figures_on_stderr_only(tmp_path, demo, new_session):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8", XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_STATE_HOME=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "korepl", "--demo", "--prompt", PROMPT_TEXT, "--verbose",
                             "--greedy", "--max-new-tokens", "20"], capture_output=True, text=True, env=env,
                            stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    # The same continuation in this process: stdout is exactly it, and the counts are its counts.
    session = new_session(demo, greedy=True, max_new_tokens=20)
    session.feed(PROMPT_TEXT)
    prompt_ids = len(session.ids)
    expected = "".join(step.text for step in session.generate())
    assert result.stdout == expected and expected
    found = figures(result.stderr)
    assert set(found) == set(FIGURES), result.stderr
    assert all(value > 0 for value in found.values()), result.stderr
    assert found["prompt eval count"] == prompt_ids
    assert found["eval count"] == session.last_ending.new_tokens == len(session.ids) - prompt_ids
    whole, before = session.decode(session.ids), session.decode(session.ids[:prompt_ids])
    assert whole.startswith(before) and whole[len(before):] == result.stdout  # the counted tokens are what it printed
    assert found["total duration"] >= found["load duration"]
    assert not any(name in result.stdout for name in FIGURES)


def test_stats_follow_the_session_counts(demo, new_session):
    session = new_session(demo, greedy=True, max_new_tokens=12)
    assert stats.of(session) is None
    session.feed(PROMPT_TEXT)
    fed = len(session.ids)
    list(session.generate())
    first = stats.of(session)
    assert (first.prompt_tokens, first.decode_tokens) == (fed, len(session.ids) - fed)
    assert first.total_seconds >= first.prefill_seconds and first.first_token_seconds is not None
    list(session.generate())  # the cache holds everything but the last token: the prefill runs almost nothing
    assert stats.of(session) is not first and stats.of(session).prompt_tokens < fed
    assert stats.count(125_164_800) == "125.2M" and stats.count(8_390_656) == "8.4M" and stats.count(950) == "950"


def test_threads_change_torch_threads_and_a_bad_value_changes_nothing(demo, new_session):
    state = SessionState(new_session(demo))
    before = torch.get_num_threads()
    try:
        assert commands.run_command(state, "/threads 1").lines == ("threads = 1",)
        assert torch.get_num_threads() == 1
        reply = commands.run_command(state, "/threads abc")
        assert reply.error and len(reply.lines) == 1 and "threads must be a whole number" in reply.lines[0]
        assert state.settings.threads == 1 and torch.get_num_threads() == 1
        commands.run_command(state, "/threads 0")  # back to the count torch chose
        assert torch.get_num_threads() == loading.default_threads()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    return build_kogpt2_shaped(tmp_path_factory.mktemp("second"), n_layer=2, n_embd=64, n_head=4, seed=7)


def context_text(out: str) -> tuple[int, str]:
    """/context's reply -> (tokens, the text)."""
    found = re.search(r"(\d+) tokens in the text[^\n]*\n(.*)", out, re.S)  # after the header: the prompt may redraw
    return int(found.group(1)), found.group(2).strip()


def test_model_switch_keeps_the_text_and_writes_on(tmp_path, second_model):
    term = Terminal(tmp_path)
    try:
        assert "model: demo" in term.run("/model")
        assert "no continuation yet" in term.run("/stats")
        term.run("/max 8")
        term.run(PROMPT_TEXT)
        stats_out = term.run("/stats")
        count, text = context_text(term.run("/context"))
        found = figures(stats_out)
        assert found["prompt eval count"] + found["eval count"] == count and found["eval count"] > 0

        bad = term.run("/model ./no/such/model")
        assert "could not load the model './no/such/model'" in bad
        answer = bad.rsplit("/model ./no/such/model", 1)[1]  # after the echoed command (redrawn as typed)
        assert len([line for line in answer.splitlines() if line.strip()]) == 1
        term.run("/model nobody/no-such-model")  # a hub id fails in the background (offline): said, old model kept
        for _ in range(120):
            if "could not load the model 'nobody/no-such-model'" in term.log:
                break
            time.sleep(0.25)
            term.run("/model")
        assert "model: demo" in term.run("/model")
        assert context_text(term.run("/context")) == (count, text)

        assert "in the background" in term.run(f"/model {second_model}")
        for _ in range(240):
            if "now writing with" in term.log:
                break
            time.sleep(0.25)
            term.run("/model")
        note = re.search(r"now writing with (.+?): the text \((\d+) tokens with its tokenizer\) is kept; "
                         r"undo history starts here", term.log)
        assert note and note.group(1) == str(second_model), term.log[-2000:]
        new_count, new_text = context_text(term.run("/context"))
        assert new_text == text and new_count == int(note.group(2))
        assert "nothing to undo" in term.run("/undo")
        term.run("")  # an empty line continues, now on the new model
        assert context_text(term.run("/context"))[0] > new_count
        info = term.run("/show info")
        for row in (rf"model\s+{re.escape(str(second_model.resolve()))}\n", r"layers\s+2\n", r"heads\s+4\n",
                    r"width\s+64\n", r"window\s+1024 tokens\n", r"vocabulary\s+51200 tokens\n",
                    r"precision\s+float32 \(asked for\)\n", r"device\s+cpu\n", r"threads\s+\d+",
                    r"parameters\s+3\.4M\n"):
            assert re.search(row, info), (row, info)
        assert re.search(r"top_k\s+\d+\n", term.run("/show"))  # bare /show: still the settings
        assert "usage: /show info" in term.run("/show nonsense")
        assert term.close() == 0
        assert len(list((tmp_path / "state" / "korepl" / "sessions").glob("*.json"))) == 2  # a file per model
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
