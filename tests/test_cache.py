"""The KV cache always matches the context: compare against one full forward pass over the model's view."""

from __future__ import annotations

import pytest
import torch

from benchmarks.fixtures import drain
from conftest import full_forward_logits

pytestmark = pytest.mark.usefixtures("runner")  # every test on every runner


def assert_cache_matches(session) -> None:
    expected = full_forward_logits(session.loaded, session.ids[session.view_start:])
    torch.testing.assert_close(session.next_logits(), expected, rtol=1e-4, atol=1e-4)


def test_appends_and_generations_keep_cache_in_step(demo, new_session):
    session = new_session(demo, max_new_tokens=12, seed=7, stop=())
    session.feed("대한민국의 모든 국민은")
    drain(session)
    session.feed(" 법률이 정하는 바에 의하여")
    assert_cache_matches(session)
    drain(session)
    session.feed("\n국가는")
    drain(session)
    assert_cache_matches(session)
    assert session.view_start == 0


def test_feeding_runs_only_the_new_tokens(demo, new_session):
    session = new_session(demo, max_new_tokens=5, seed=1, stop=())
    session.feed("대한민국의 모든 국민은")
    session.next_logits()
    before = session.tokens_run
    added = session.feed(" 인간으로서의 존엄과 가치를 가지며")
    session.next_logits()
    assert session.tokens_run - before == added > 0


def test_each_generated_token_is_one_forward_step(demo, new_session):
    session = new_session(demo, max_new_tokens=10, seed=3, stop=())
    session.feed("이 법은")
    session.next_logits()
    before_run, before_len = session.tokens_run, len(session.ids)
    drain(session)
    generated = len(session.ids) - before_len
    assert generated == 10
    # One step per token; the last one runs as the continuation ends, ready for what comes next.
    assert session.tokens_run - before_run == generated
    session.next_logits()
    assert session.tokens_run - before_run == generated


def test_window_slide_rebuilds_cache_over_recent_part(demo, new_session):
    session = new_session(demo, max_new_tokens=60, seed=5, stop=(), window_keep=0.5)
    text = " ".join(["대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다."] * 120)
    session.feed(text)
    total = len(session.ids)
    assert total > demo.window  # a paste longer than the window
    session.next_logits()
    assert session.slides == 1 and session.view_start == total - demo.window // 2
    drain(session)
    assert_cache_matches(session)
    # The full text is never lost, only what the model sees slides.
    assert session.text.startswith(text) and len(session.ids) == total + 60


def test_slide_during_generation(demo, new_session):
    session = new_session(demo, max_new_tokens=40, seed=11, stop=(), window_keep=0.75)
    session.feed(" ".join(["국회는 법률에 저촉되지 아니하는 범위안에서 의사와 내부규율에 관한 규칙을 제정할 수 있다."] * 60))
    session.context.truncate(demo.window - 10)
    session.context.reset_view(0)  # just under the window, with the view from the start
    slides = session.slides  # feeding more than the window slid the view already
    session.next_logits()
    assert session.slides == slides
    drain(session)
    assert session.slides == slides + 1
    assert len(session.ids) - session.view_start <= demo.window
    assert_cache_matches(session)


def test_interrupt_inside_forward_leaves_cache_consistent(demo, new_session, runner):
    """Ctrl+C in the middle of a forward pass (after some layers ran) must not corrupt the cache."""
    session = new_session(demo, max_new_tokens=30, seed=2, stop=())
    session.feed("대한민국의 영토는")
    calls = {"n": 0}

    def interrupt_on_fifth_call(*_):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    # Layer 2's MLP runs after layers 0-1 and layer 2's attention have written this step into the cache.
    # The compiled step runs as one call that no signal splits: Ctrl+C lands after it wrote the cache, before
    # the runner counted the token.
    if runner in ("compiled", "hub-compiled"):
        compiled = session.context.runner.compiled
        original_step = compiled._step

        def step_then_interrupt(*args, **kwargs):
            logits = original_step(*args, **kwargs)
            interrupt_on_fifth_call()
            return logits

        compiled._step = step_then_interrupt
        undo = lambda: setattr(compiled, "_step", original_step)  # noqa: E731
    elif runner == "hub":
        handle = demo.model.transformer.h[2].mlp.register_forward_pre_hook(interrupt_on_fifth_call)
        undo = handle.remove
    else:
        layer = session.context.runner.layers[2]
        original = layer.c_fc
        layer.c_fc = lambda x: interrupt_on_fifth_call() or original(x)
        undo = lambda: setattr(layer, "c_fc", original)  # noqa: E731
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in session.generate():
                pass
    finally:
        undo()
    assert session.last_ending.reason == "interrupted"
    # The fifth call runs the fourth generated token (the compiled step is not called for the prompt's prefill).
    assert session.last_ending.new_tokens == (5 if runner in ("compiled", "hub-compiled") else 4)
    assert session.text == session.decode(session.ids)
    assert_cache_matches(session)
    session.feed(" 그리고")
    assert_cache_matches(session)


def test_crop_then_logits_rerun_last_token(demo, new_session):
    session = new_session(demo, max_new_tokens=8, seed=4, stop=())
    session.feed("헌법개정은 국회재적의원 과반수 또는 대통령의 발의로 제안된다.")
    drain(session)
    session.next_logits()
    session.context.truncate(len(session.ids) - 5)
    assert_cache_matches(session)
