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


def hf_greedy(loaded, prompt: str, max_new_tokens: int, **kwargs) -> list[int]:
    """What the source study ran: generate(do_sample=False, repetition_penalty=2.0, use_cache=True); new ids only."""
    ids = loaded.tokenizer.encode(prompt)
    out = loaded.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        repetition_penalty=2.0,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        eos_token_id=None,  # compare raw ids; stop handling is checked separately
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return out[0, len(ids):].tolist()


def korepl_greedy(new_session, loaded, prompt: str, max_new_tokens: int) -> list[int]:
    session = new_session(loaded, greedy=True, repetition_penalty=2.0, max_new_tokens=max_new_tokens, stop=())
    assert isinstance(session._runner, StaticRunner)  # korepl's own lean step, not the model's forward
    session.feed(prompt)
    start = len(session.ids)
    for _ in session.generate():
        pass
    return session.ids[start:]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_demo_greedy_equals_generate(demo, new_session, prompt):
    expected = hf_greedy(demo, prompt, 48)
    assert korepl_greedy(new_session, demo, prompt, 48) == expected
    assert len(expected) == 48


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_kogpt2_shaped_greedy_equals_generate(kogpt2_shaped, new_session, prompt):
    expected = hf_greedy(kogpt2_shaped, prompt, 24)
    assert korepl_greedy(new_session, kogpt2_shaped, prompt, 24) == expected


def test_greedy_stops_where_generate_stops_at_eos(demo, new_session):
    """With </s> as a stop token, korepl's continuation is generate's ids up to (not including) the first </s>."""
    prompt = PROMPTS[1]
    ids = demo.tokenizer.encode(prompt)
    out = demo.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              do_sample=False, repetition_penalty=2.0, max_new_tokens=200,
                              eos_token_id=[1, 8], pad_token_id=3)[0, len(ids):].tolist()
    expected = [t for t in out if t != 3]
    expected = expected[: next((i for i, t in enumerate(expected) if t in (1, 8)), len(expected))]
    session = new_session(demo, greedy=True, max_new_tokens=200, stop=("</s>", "</d>"))
    session.feed(prompt)
    for _ in session.generate():
        pass
    assert session.ids[len(ids):] == expected
