"""Sampling: pure transforms against Hugging Face's processors, and properties of the pick."""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings as hsettings, strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from korepl import sampling
from korepl.controls import Controls

VOCAB = 64


@st.composite
def logits_and_history(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(VOCAB, generator=generator) * draw(st.floats(0.1, 8.0))
    history = torch.tensor(draw(st.lists(st.integers(0, VOCAB - 1), min_size=0, max_size=40)), dtype=torch.long)
    return logits, history


@given(logits_and_history(), st.floats(0.05, 10.0))
def test_repetition_penalty_equals_hf(case, penalty):
    logits, history = case
    ours = sampling.apply_repetition_penalty(logits, history, penalty)
    if history.numel() == 0:
        torch.testing.assert_close(ours, logits)
        return
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(history[None], logits[None].clone())[0]
    torch.testing.assert_close(ours, theirs)


@given(logits_and_history(), st.floats(0.01, 1.0))
def test_top_p_keeps_what_hf_keeps(case, p):
    logits, _ = case
    ids, scores = sampling.top_k_candidates(logits, VOCAB)
    keep = sampling.top_p_keep(scores, p)
    theirs = TopPLogitsWarper(p)(None, logits[None].clone())[0]
    kept_by_hf = set(torch.nonzero(torch.isfinite(theirs)).flatten().tolist())
    assert set(ids[:keep].tolist()) == kept_by_hf


@given(logits_and_history(), st.integers(1, VOCAB))
def test_top_k_keeps_what_hf_keeps(case, k):
    logits, _ = case
    ids, _ = sampling.top_k_candidates(logits, k)
    theirs = TopKLogitsWarper(k)(None, logits[None].clone())[0]
    assert set(ids.tolist()) == set(torch.nonzero(torch.isfinite(theirs)).flatten().tolist())


NO_CONTROLS = Controls(frozenset(), (), (), (), " ", None, frozenset())


def choose(logits, history, settings, generator) -> sampling.Choice:
    """korepl's pick step on one logits vector, with `history` as the ids the model sees (no bans, no stops)."""
    step = sampling.PickStep(settings, NO_CONTROLS, decode=lambda ids: "")
    return step(logits, sampling.At(history.tolist(), 0), generator)


@hsettings(max_examples=60)
@given(logits_and_history(), st.integers(1, 10), st.sampled_from(["softmax", "uniform"]),
       st.floats(0.2, 3.0), st.integers(0, 2**32))
def test_top_k_never_leaves_the_k_best(defaults, case, k, sampler, temperature, seed):
    logits, history = case
    settings = dataclasses.replace(defaults, top_k=k, sampler=sampler, temperature=temperature, top_p=1.0)
    choice = choose(logits, history, settings, sampling.make_generator(seed))
    penalised = sampling.apply_repetition_penalty(logits, history, settings.repetition_penalty)
    kth_best = torch.topk(penalised, k).values[-1]
    assert penalised[choice.token_id] >= kth_best
    assert 0.0 < choice.probability <= 1.0


@given(logits_and_history(), st.integers(0, 2**32))
def test_top_k_one_equals_greedy(defaults, case, seed):
    logits, history = case
    sampled = dataclasses.replace(defaults, greedy=False, top_k=1)
    greedy = dataclasses.replace(defaults, greedy=True)
    generator = sampling.make_generator(seed)
    assert choose(logits, history, sampled, generator).token_id == \
        choose(logits, history, greedy, generator).token_id


def test_uniform_pick_reaches_every_one_of_the_k(defaults):
    # One candidate far likelier than the rest: softmax would almost never leave it, uniform must.
    logits = torch.full((VOCAB,), -5.0)
    best = torch.tensor([30, 7, 12, 50, 3])
    logits[best] = torch.tensor([20.0, 2.0, 1.5, 1.0, 0.5])
    settings = dataclasses.replace(defaults, top_k=5, sampler="uniform", repetition_penalty=1.0)
    generator = sampling.make_generator(0)
    picks = [choose(logits, torch.tensor([], dtype=torch.long), settings, generator).token_id
             for _ in range(400)]
    assert set(picks) == set(best.tolist())
    assert min(picks.count(t) for t in best.tolist()) > 40  # roughly even: 80 each expected


def test_softmax_pick_follows_probabilities(defaults):
    logits = torch.full((VOCAB,), -30.0)
    logits[[1, 2]] = torch.tensor([0.0, -2.0])  # p = 0.88 and 0.12
    settings = dataclasses.replace(defaults, top_k=2, sampler="softmax", repetition_penalty=1.0)
    generator = sampling.make_generator(0)
    picks = [choose(logits, torch.tensor([], dtype=torch.long), settings, generator).token_id
             for _ in range(500)]
    assert 380 < picks.count(1) < 490


def test_same_seed_same_text_and_other_seed_other_text(demo, new_session):
    def sample(seed):
        session = new_session(demo, seed=seed, max_new_tokens=30, stop=())
        session.feed("대한민국의 모든 국민은")
        return "".join(step.text for step in session.generate())

    assert sample(42) == sample(42)
    assert sample(42) != sample(43)


# --- min_p, and the whole chain in Hugging Face's order ----------------------------------------------


@given(logits_and_history(), st.floats(0.0, 1.0))
def test_min_p_keeps_what_hf_keeps(case, min_p):
    logits, _ = case
    ids, scores = sampling.top_k_candidates(logits, VOCAB)
    keep = sampling.min_p_keep(scores, min_p)
    theirs = MinPLogitsWarper(min_p)(None, logits[None].clone())[0]
    assert set(ids[:keep].tolist()) == set(torch.nonzero(torch.isfinite(theirs)).flatten().tolist())


def hf_warpers(settings) -> LogitsProcessorList:
    """The sampling warpers `generate` builds for these settings, in its order (see _get_logits_processor)."""
    warpers = LogitsProcessorList()
    if settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(settings.top_p))
    if settings.min_p > 0.0:
        warpers.append(MinPLogitsWarper(settings.min_p))
    return warpers


@hsettings(max_examples=150)
@given(logits_and_history(), st.floats(0.1, 5.0), st.integers(1, VOCAB), st.floats(0.05, 1.0),
       st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
def test_softmax_chances_are_what_hf_samples_from(defaults, case, temperature, k, p, min_p):
    logits, _ = case
    settings = dataclasses.replace(defaults, greedy=False, sampler="softmax", temperature=temperature, top_k=k,
                                   top_p=p, min_p=min_p, repetition_penalty=1.0)
    scores = sampling.PickStep(settings, NO_CONTROLS, decode=lambda ids: "").scores(logits, sampling.At([], 0))
    ours = sampling.chances(scores, settings)
    theirs = torch.softmax(hf_warpers(settings)(None, logits[None].clone())[0], dim=-1)  # multinomial draws by these
    assert set(torch.nonzero(ours).flatten().tolist()) == set(torch.nonzero(theirs).flatten().tolist())
    torch.testing.assert_close(ours, theirs)


def test_min_p_leaves_greedy_alone(demo, new_session):
    def write(**changes):
        session = new_session(demo, greedy=True, max_new_tokens=25, stop=(), **changes)
        session.feed("대한민국의 모든 국민은")
        return [step.token_id for step in session.generate()]

    assert write(min_p=0.9) == write(min_p=0.0)


def test_min_p_one_samples_only_the_likeliest_token(demo, new_session):
    # min_p 1 keeps only tokens as likely as the best: sampling then writes what greedy writes.
    def write(**changes):
        session = new_session(demo, max_new_tokens=25, stop=(), seed=5, **changes)
        session.feed("대한민국의 모든 국민은")
        return [step.token_id for step in session.generate()]

    greedy = write(greedy=True)
    assert write(greedy=False, top_k=50, top_p=1.0, temperature=1.5, min_p=1.0) == greedy
    assert write(greedy=False, top_k=50, top_p=1.0, temperature=1.5, min_p=0.0) != greedy
