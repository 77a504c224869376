"""The writer's controls: each equals its Hugging Face processor; bans, stops and newlines hold in generation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
)

from korepl import sampling
from korepl.session import Session
from korepl.settings import SettingError

VOCAB = 12  # a small vocabulary makes repeats (and so bans) common


def hf_banned(processor, history: list[int]) -> set[int]:
    scores = processor(torch.tensor([history]), torch.zeros(1, VOCAB))[0]
    return set(torch.nonzero(torch.isinf(scores)).flatten().tolist())


@given(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40), st.integers(1, 5))
def test_no_repeat_ngram_equals_hf(history, n):
    assert set(sampling.no_repeat_ngram_bans(history, n)) == hf_banned(NoRepeatNGramLogitsProcessor(n), history)


@given(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=30),
       st.lists(st.lists(st.integers(2, VOCAB - 1), min_size=1, max_size=4), min_size=1, max_size=4))
def test_bad_words_equal_hf(history, sequences):
    processor = NoBadWordsLogitsProcessor(sequences, eos_token_id=1)
    assert set(sampling.bad_words_bans(history, sequences)) == hf_banned(processor, history)


@given(st.integers(0, 10), st.integers(0, 10), st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=3,
                                                        unique=True))
def test_min_new_tokens_equals_hf(new_tokens, minimum, stop_ids):
    prompt = [5, 6, 7]
    processor = MinNewTokensLengthLogitsProcessor(len(prompt), minimum, stop_ids)
    expected = hf_banned(processor, prompt + [2] * new_tokens)
    assert set(sampling.min_new_tokens_bans(new_tokens, minimum, stop_ids)) == expected


@pytest.mark.parametrize("prompt", ["대한민국의 모든 국민은", "이 법은"])
def test_greedy_with_every_control_equals_generate(demo, new_session, hf_greedy, prompt):
    session = new_session(demo, greedy=True, repetition_penalty=2.0, no_repeat_ngram_size=3, min_new_tokens=5,
                          ban=("대통령", "국회"), max_new_tokens=60)
    expected = hf_greedy(demo, prompt, 60, stops=("</s>", "</d>"), repetition_penalty=2.0, no_repeat_ngram_size=3,
                         min_new_tokens=5, bad_words_ids=[list(s) for s in session.controls.ban_sequences])
    session.feed(prompt)
    start = len(session.ids)
    text = "".join(step.text for step in session.generate())
    assert session.ids[start:] == expected and len(expected) == 60
    assert "대통령" not in text and "국회" not in text


def test_ban_goes_further_than_hf_bad_words(demo, new_session, hf_greedy):
    """HF bans id sequences only: '▁정한다.' (one token) still writes 정한다.  korepl checks the text too."""
    session = new_session(demo, greedy=True, ban=("정한다",), max_new_tokens=60)
    hf = hf_greedy(demo, "대한민국의 모든 국민은", 60, stops=("</s>", "</d>"), repetition_penalty=2.0,
                   bad_words_ids=[list(s) for s in session.controls.ban_sequences])
    assert "정한다" in demo.tokenizer.decode(hf)
    session.feed("대한민국의 모든 국민은")
    assert "정한다" not in "".join(step.text for step in session.generate())


def test_repetition_window_penalises_only_recent_tokens(demo, new_session):
    session = new_session(demo, repetition_window=3)
    session.feed("대한민국의 모든 국민은 법률이 정하는 바에 의하여")
    assert session.penalty_history().tolist() == session.ids[-3:]
    session.settings = dataclasses.replace(session.settings, repetition_window=None)
    assert session.penalty_history().tolist() == session.ids


def test_a_banned_multi_token_word_never_appears(demo, new_session):
    word = "정한다"  # the demo model writes it in most continuations of this prompt
    assert all(len(spelling) > 1 for spelling in Session(demo, new_session(demo).settings).vocab.spellings(word))

    def continuations(count, **changes):
        texts = []
        for seed in range(count):
            session = new_session(demo, seed=seed, max_new_tokens=20, **changes)
            session.feed("대한민국의 모든 국민은")
            texts.append("".join(step.text for step in session.generate()))
        return texts

    assert sum(word in t for t in continuations(40)) >= 10
    assert not any(word in t for t in continuations(200, ban=(word,)))


def test_stop_text_spanning_two_tokens_stops_and_is_not_shown(demo, new_session):
    free = new_session(demo, greedy=True, stop=(), max_new_tokens=30)
    free.feed("대한민국의 모든 국민은")
    start = len(free.ids)
    free_text = "".join(step.text for step in free.generate())
    pieces = [free.decode(free.ids[: i + 1])[len(free.decode(free.ids[:i])):] for i in range(start, len(free.ids))]
    # A stop text that begins inside one token (its last character) and ends inside the next.
    index = next(i for i in range(3, len(pieces) - 1)
                 if len(pieces[i].strip()) >= 2 and pieces[i + 1][:1].strip() and not pieces[i][-1].isspace())
    stop = pieces[index][-1] + pieces[index + 1][0]
    assert stop in free_text
    stopped = new_session(demo, greedy=True, stop=(stop,), max_new_tokens=30)
    stopped.feed("대한민국의 모든 국민은")
    shown = "".join(step.text for step in stopped.generate())
    assert stopped.last_ending.reason == "stop-text" and stopped.last_ending.detail == stop
    assert shown == free_text[: free_text.index(stop)]
    assert stop not in shown and stopped.text == "대한민국의 모든 국민은" + shown
    # The context is exactly what was shown: the next-token logits match a fresh session over that text.
    fresh = new_session(demo)
    fresh.feed(stopped.text)
    torch.testing.assert_close(stopped.next_logits(), fresh.next_logits(), rtol=1e-4, atol=1e-4)


def test_newlines_survive_and_never_become_unk(demo, new_session):
    text = "첫째 줄\n둘째 줄\r\n\n셋째 줄"
    session = new_session(demo)
    assert not session.vocab.has_newline  # the demo tokenizer lacks a newline, like KoGPT2's
    assert demo.tokenizer.unk_token_id in session.vocab.encode(text)  # what a naive encode would feed
    session.feed(text)
    assert demo.tokenizer.unk_token_id not in session.ids
    assert session.text == text
    session.add_line("넷째 줄")
    assert session.text == text + "\n넷째 줄"
    assert demo.tokenizer.unk_token_id not in session.ids


def test_newline_as_a_named_token(demo, new_session):
    session = new_session(demo, newline="<unused0>")
    session.feed("첫째 줄\n둘째 줄")
    assert session.ids.count(demo.tokenizer.convert_tokens_to_ids("<unused0>")) == 1
    assert session.decode(session.ids) == "첫째 줄\n둘째 줄"
    with pytest.raises(SettingError, match="not one"):
        session.settings = dataclasses.replace(session.settings, newline="<no-such-token>")
    assert session.settings.newline == "<unused0>"  # refused: nothing changed


def test_min_new_tokens_holds_back_a_stop_token(demo, new_session):
    """Where a generation stopped at a stop token, that token is again greedy's next pick: the next turn ends at
    once, unless min_new_tokens holds the stop back."""
    session = new_session(demo, greedy=True, stop=("</s>", "</d>"), max_new_tokens=200)
    session.feed("대한민국의 모든 국민은")
    list(session.generate())
    assert session.last_ending.reason == "stop-token"
    first = session.last_ending.detail
    assert list(session.generate()) == []
    assert (session.last_ending.reason, session.last_ending.detail, session.last_ending.new_tokens) == \
        ("stop-token", first, 0)
    session.settings = dataclasses.replace(session.settings, min_new_tokens=3)
    list(session.generate())
    assert session.last_ending.new_tokens >= 3


@pytest.mark.parametrize("changes", [
    dict(greedy=True),
    dict(greedy=True, repetition_penalty=1.7, repetition_window=12),
    dict(greedy=False, temperature=0.7, repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=4,
         ban=("대통령", "국회")),
    dict(greedy=False, temperature=1.4, no_repeat_ngram_size=1, ban=("법률",)),
])
@pytest.mark.parametrize("new_tokens", [0, 3, 9])
def test_processor_list_equals_the_transforms_composed_by_hand(demo, new_session, changes, new_tokens):
    """The list built once per settings change gives exactly what penalty, bans and temperature give in one go."""
    session = new_session(demo, stop=("</s>",), **changes)
    session.feed("대한민국의 국회는 국회의 법률에 따라 대통령은 국회의 법률에 따라")
    logits, settings, controls = session.next_logits(), session.settings, session.controls
    history = session.ids[session.view_start:]
    banned = (sampling.no_repeat_ngram_bans(history, settings.no_repeat_ngram_size)
              + sampling.bad_words_bans(history, controls.ban_sequences)
              + sampling.min_new_tokens_bans(new_tokens, settings.min_new_tokens, sorted(controls.stop_ids))
              + list(controls.suppress_ids))
    # By hand, in one go: the penalty, every ban at -inf, then the temperature (unless greedy).
    expected = sampling.ban(sampling.apply_repetition_penalty(logits.float(), session.penalty_history(),
                                                              settings.repetition_penalty), banned)
    expected = expected if settings.greedy else expected / settings.temperature
    processors = sampling.processors(settings, controls)
    assert torch.equal(processors(logits, sampling.At(session.ids, session.view_start, new_tokens)), expected)
