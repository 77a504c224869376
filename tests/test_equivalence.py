"""Greedy decoding with repetition penalty 2.0 gives exactly `model.generate`'s ids."""

from __future__ import annotations

import pytest
import torch

from korepl.runner import StaticRunner

PROMPTS = [
    "수강신청에서 원하는 강의를 신청하기 위해서는",
    "대한민국의 모든 국민은",
    "이 법은",
    "메뉴에서 파일을 선택하면",
]


def korepl_greedy(new_session, loaded, prompt: str, max_new_tokens: int) -> list[int]:
    session = new_session(loaded, greedy=True, repetition_penalty=2.0, max_new_tokens=max_new_tokens, stop=())
    assert isinstance(session.context.runner, StaticRunner)  # korepl's own lean step, not the model's forward
    session.feed(prompt)
    start = len(session.ids)
    for _ in session.generate():
        pass
    return session.ids[start:]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_demo_greedy_equals_generate(demo, new_session, hf_greedy, prompt):
    expected = hf_greedy(demo, prompt, 48, repetition_penalty=2.0)
    assert korepl_greedy(new_session, demo, prompt, 48) == expected
    assert len(expected) == 48


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_kogpt2_shaped_greedy_equals_generate(kogpt2_shaped, new_session, hf_greedy, prompt):
    expected = hf_greedy(kogpt2_shaped, prompt, 24, repetition_penalty=2.0)
    assert korepl_greedy(new_session, kogpt2_shaped, prompt, 24) == expected


def test_greedy_stops_where_generate_stops_at_eos(demo, new_session, hf_greedy):
    """With </s> as a stop token, korepl's continuation is generate's ids up to (not including) the first </s>."""
    prompt = PROMPTS[1]
    ids = demo.tokenizer.encode(prompt)
    expected = hf_greedy(demo, prompt, 200, stops=("</s>", "</d>"), repetition_penalty=2.0)
    session = new_session(demo, greedy=True, max_new_tokens=200, stop=("</s>", "</d>"))
    session.feed(prompt)
    for _ in session.generate():
        pass
    assert session.ids[len(ids):] == expected
