"""An honest /peek: each candidate's chance is the chance the pick step picks it, under the settings."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from hypothesis import given, settings as hsettings, strategies as st

from korepl import commands, sampling
from korepl.controls import Controls
from korepl.session import SessionError
from korepl.width import width

from test_repl_pty import ANSI, Terminal

VOCAB = 48
NO_CONTROLS = Controls(frozenset(), (), (), (), " ", None, frozenset())
PROMPT_TEXT = "대한민국의 모든 국민은"


@st.composite
def logits(draw):
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn(VOCAB, generator=generator) * draw(st.floats(0.1, 8.0))


@st.composite
def decoding(draw, defaults):
    return dataclasses.replace(
        defaults, greedy=draw(st.booleans()), sampler=draw(st.sampled_from(["softmax", "uniform"])),
        top_k=draw(st.integers(1, VOCAB + 5)), top_p=draw(st.floats(0.01, 1.0)),
        min_p=draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0))), temperature=draw(st.floats(0.1, 5.0)),
        repetition_penalty=1.0)


def step_for(settings) -> sampling.PickStep:
    return sampling.PickStep(settings, NO_CONTROLS, decode=lambda ids: "")


@pytest.fixture(scope="module")
def settings_strategy(defaults):
    return decoding(defaults)


@hsettings(max_examples=150)
@given(data=st.data(), raw=logits())
def test_chances_sum_to_one_over_the_sampling_set(settings_strategy, data, raw):
    settings = data.draw(settings_strategy)
    scores = step_for(settings).scores(raw, sampling.At([], 0))
    chances = sampling.chances(scores, settings)
    chosen = sampling.sampling_set(scores, settings)
    members = chosen.ids.tolist()
    assert math.isclose(float(chances.sum()), 1.0, rel_tol=1e-5)
    assert math.isclose(float(chances[members].sum()), 1.0, rel_tol=1e-5)
    assert set(torch.nonzero(chances).flatten().tolist()) == set(members)
    # The set is the best tokens: nothing left out scores above anything kept.
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[members] = False
    if outside.any():
        assert scores[outside].max() <= scores[members].min()
    if settings.greedy:
        assert members == [int(torch.argmax(scores))]
    elif settings.sampler == "uniform":
        torch.testing.assert_close(chances[members], torch.full((len(members),), 1 / len(members)))
    else:
        torch.testing.assert_close(chances[members], torch.softmax(scores[members], dim=-1))


def chi_square_p_value(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test that `counts` were drawn with the `expected` counts: the chance of a worse fit."""
    statistic = float(((counts - expected) ** 2 / expected).sum())
    freedom = counts.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(freedom / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


@pytest.mark.parametrize("changes", [
    dict(sampler="softmax", top_k=6, top_p=1.0, min_p=0.0, temperature=1.0),
    dict(sampler="softmax", top_k=20, top_p=0.8, min_p=0.0, temperature=1.4),
    dict(sampler="softmax", top_k=40, top_p=1.0, min_p=0.15, temperature=0.8),
    dict(sampler="uniform", top_k=20, top_p=0.9, min_p=0.05, temperature=1.0),
])
def test_chances_match_how_often_the_pick_step_picks(defaults, changes):
    settings = dataclasses.replace(defaults, greedy=False, repetition_penalty=1.0, **changes)
    raw = torch.randn(VOCAB, generator=torch.Generator().manual_seed(7)) * 2
    step, at, draws = step_for(settings), sampling.At([], 0), 2000
    chances = sampling.chances(step.scores(raw, at), settings)
    generator = sampling.make_generator(1234)
    counts = torch.bincount(torch.tensor([step(raw, at, generator).token_id for _ in range(draws)]),
                            minlength=VOCAB).double()
    members = torch.nonzero(chances).flatten()
    assert counts[chances == 0].sum() == 0, "the pick took a token /peek gives no chance"
    assert len(members) > 1  # else there is nothing to compare
    expected = chances[members].double() * draws
    assert chi_square_p_value(counts[members], expected) > 1e-3
    # The same test tells the samplers apart: it rejects the other sampler's chances.
    other = dataclasses.replace(settings, sampler="uniform" if settings.sampler == "softmax" else "softmax")
    wrong = sampling.chances(step.scores(raw, at), other)[members].double()
    assert chi_square_p_value(counts[members], wrong * draws) < 1e-3


def peek_at(demo, new_session, **changes):
    session = new_session(demo, **changes)
    session.feed(PROMPT_TEXT)
    return session


def test_uniform_gives_every_one_of_the_set_the_same_chance(demo, new_session):
    session = peek_at(demo, new_session, greedy=False, sampler="uniform", top_k=4, top_p=1.0, min_p=0.0)
    candidates = session.peek(6)
    inside = [c for c in candidates if c.in_set]
    assert len(inside) == 4 and all(c.chance == pytest.approx(0.25) for c in inside)
    assert len({round(c.probability, 6) for c in inside}) > 1  # the model does not find them equally likely
    assert [c.chance for c in candidates[4:]] == [0.0, 0.0]


def test_peek_under_top_k_3_lists_the_set_then_what_is_outside(demo, new_session):
    session = peek_at(demo, new_session, greedy=False, sampler="softmax", top_k=3, top_p=1.0, min_p=0.0)
    ids_before, text_before = session.ids[:], session.text
    candidates = session.peek(5)
    assert session.ids == ids_before and session.text == text_before  # peek changes nothing
    assert [c.in_set for c in candidates] == [True, True, True, False, False]
    assert [c.outside for c in candidates[3:]] == ["top-k 3", "top-k 3"]
    assert sum(c.chance for c in candidates) == pytest.approx(1.0)
    probabilities = [c.probability for c in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    # The chance is the probability renormalised over the three: more than the model's own.
    top3 = sum(probabilities[:3])
    assert [c.chance for c in candidates[:3]] == pytest.approx([p / top3 for p in probabilities[:3]], rel=1e-4)
    for c in candidates:
        assert c.text == c.token.replace("▁", "␣")

    state = type("State", (), {"session": session, "settings": session.settings})()
    reply = commands._peek(state, "5")
    rows = [line for line in reply.lines if re.match(r"\s*\d+\. ", line)]
    assert len(rows) == 5
    assert "chance of being picked" in reply.lines[0]
    notes = [line for line, style in zip(reply.lines, reply.styles) if style == "note"]
    assert any("outside top-k 3" in line for line in notes)
    assert [reply.styles[reply.lines.index(row)] for row in rows] == ["", "", "", "note", "note"]


def test_min_p_narrows_the_set_to_tokens_near_the_best(demo, new_session):
    wide = peek_at(demo, new_session, greedy=False, top_k=50, top_p=1.0, min_p=0.0).peek(50)
    narrow = peek_at(demo, new_session, greedy=False, top_k=50, top_p=1.0, min_p=0.5).peek(50)
    assert [c.token_id for c in wide] == [c.token_id for c in narrow]
    best = narrow[0].probability
    assert [c.in_set for c in narrow] == [c.probability >= 0.5 * best for c in narrow]
    assert sum(c.in_set for c in narrow) < sum(c.in_set for c in wide) == 50
    assert {c.outside for c in narrow if not c.in_set} == {"min-p 0.5"}


def test_pick_may_take_a_token_outside_the_set(demo, new_session):
    session = peek_at(demo, new_session, greedy=True, max_new_tokens=2)
    fourth = session.peek(4)[3]
    assert not fourth.in_set and fourth.outside == "greedy's choice" and fourth.chance == 0
    length = len(session.ids)
    list(session.pick(4))
    assert session.ids[length] == fourth.token_id


def test_pick_past_the_candidates_is_a_clear_error(demo, new_session):
    session = peek_at(demo, new_session)
    offered = len(session.peek(len(demo.tokenizer)))
    with pytest.raises(SessionError, match=f"there are {offered} candidates"):
        session.pick(offered + 1)


def test_peek_columns_line_up_by_display_width_with_hangul(demo, new_session):
    session = peek_at(demo, new_session, greedy=False, top_k=8, top_p=1.0, min_p=0.0)
    state = type("State", (), {"session": session, "settings": session.settings})()
    reply = commands._peek(state, "30")
    rows = [line for line in reply.lines if re.match(r"\s*\d+\. ", line)]
    texts = [c.text for c in session.peek(30)]
    assert len(rows) == len(texts) == 30
    assert any(width(t) > len(t) for t in texts)  # some tokens are Hangul, two columns a character
    # Before each token, the same number of columns; after it, the probability column starts at one place.
    starts, ends = set(), set()
    for row, text in zip(rows, texts):
        shown = text if width(text) <= commands.PEEK_TOKEN_COLUMNS else None
        if shown is not None:
            at = row.index(shown, 12)
            starts.add(width(row[:at]))
        ends.add(width(row[:row.rindex(" ", 0, len(row) - 1)]))
    assert len(starts) == 1 and len(ends) == 1
    assert all(width(line) <= 40 for line in reply.lines)


def test_peek_in_the_terminal_dims_what_a_pick_never_takes(tmp_path):
    term = Terminal(tmp_path)
    term.run(PROMPT_TEXT)
    term.run("/greedy off")
    term.run("/topk 3")
    shown = term.run("/peek 5")
    raw = term.child.before
    rows = re.findall(r"^\s*(\d)\.\s+(\d+\.\d\d)%", shown, re.M)
    assert [n for n, _ in rows] == ["1", "2", "3", "4", "5"]
    assert sum(float(c) for _, c in rows) == pytest.approx(100, abs=0.05)
    assert [float(c) for _, c in rows[3:]] == [0.0, 0.0]
    assert "outside top-k 3" in shown
    dimmed = {}  # row number -> printed in the "note" style (bright black)?
    for line in raw.split("\n"):
        row = re.match(r"\s*(\d)\. ", ANSI.sub("", line))
        if row:
            dimmed[row.group(1)] = "\x1b[0;90m" in line
    assert dimmed == {"1": False, "2": False, "3": False, "4": True, "5": True}
    assert term.close() == 0
