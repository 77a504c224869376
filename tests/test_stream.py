"""Streaming text: the pieces join to exactly the decode, never ending in half a character."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from korepl.loading import DEMO_MODEL_DIR, load_tokenizer
from korepl.stream import REPLACEMENT_CHAR, StreamDecoder, TextGate, stop_scan

MIXED = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul syllables
        st.sampled_from(list("abcXYZ0123456789 .,?!\n")),
        st.sampled_from(list("😀😤🎉👍🏽한국어")),
    ),
    max_size=60,
)


def byte_level_tokenizer(corpus: str = "대한민국 헌법 abc 123 😀"):
    """A small byte-level BPE trained on `corpus`: emoji and Hangul split into several tokens, each part of a character."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([corpus] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


TOKENIZERS = {"demo": load_tokenizer(str(DEMO_MODEL_DIR)), "byte-level": byte_level_tokenizer()}


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("name", TOKENIZERS)
@hsettings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=MIXED, new=MIXED)
def test_pieces_join_to_the_decode(name, context, new):
    tokenizer = TOKENIZERS[name]
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    new_ids = tokenizer.encode(new, add_special_tokens=False)
    decoder = StreamDecoder(lambda ids: decode(tokenizer, ids), context_ids)
    pieces = [decoder.push(t) for t in new_ids]
    assert not any(p.endswith(REPLACEMENT_CHAR) for p in pieces)
    before = decode(tokenizer, context_ids)
    after = decode(tokenizer, context_ids + new_ids)
    assert decoder.held == 0
    assert "".join(pieces) == after[len(before):]


def test_byte_level_emoji_is_held_until_whole():
    tokenizer = TOKENIZERS["byte-level"]
    ids = tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1  # the test needs an emoji split over several tokens
    decoder = StreamDecoder(lambda i: decode(tokenizer, i), [])
    pieces = [decoder.push(t) for t in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "😀"


@given(st.text(alphabet="ab가나 ", max_size=30), st.lists(st.text(alphabet="ab가나 ", min_size=1, max_size=4),
                                                          min_size=1, max_size=3))
def test_stop_scan_never_shows_the_start_of_a_stop(text, stops):
    safe, stop_at = stop_scan(text, stops)
    if stop_at is not None:
        assert any(text[stop_at:].startswith(s) for s in stops)
        assert all(s not in text[: stop_at + len(s) - 1] for s in stops)
    else:
        assert all(s not in text for s in stops)
        # whatever text follows, no stop can begin before `safe`
        for stop in stops:
            for cut in range(1, len(stop)):
                continuation = text + stop[cut:]
                first = continuation.find(stop)
                assert first == -1 or first >= safe


def test_gate_stops_before_a_stop_text_that_spans_tokens():
    tokenizer = TOKENIZERS["demo"]
    ids = tokenizer.encode("국민은 법률이 정하는 바에 의하여", add_special_tokens=False)
    gate = TextGate(lambda i: decode(tokenizer, i), [], ["정하는"])
    shown = ""
    for token_id in ids:
        shown += gate.push(token_id)
        if gate.stopped_by:
            break
    assert gate.stopped_by == "정하는"
    assert "정하는" not in shown and shown.strip().startswith("국민은")
    assert decode(tokenizer, ids[: gate.shown_ids]) == shown
