"""Precision paths: int8 and half precision keep the model's choices; auto measures the whole step and remembers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from korepl import precision
from korepl.loading import DEMO_MODEL_DIR, load_model
from korepl.runner import HubRunner, OpPrecision, StaticRunner
from korepl.session import Session
from korepl.settings import load_defaults

def predictions(loaded, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Teacher-forced: the top-1 prediction at every position, and the perplexity of the text."""
    with torch.inference_mode():
        logits = loaded.model(ids).logits[0, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    return logits.argmax(-1), float(torch.exp(loss))


@pytest.fixture(scope="module")
def sample(demo):
    """900 tokens of the demo model's own writing (seeded), to compare every position on."""
    session = Session(demo, dataclasses.replace(load_defaults().decoding, seed=7, max_new_tokens=900, stop=()))
    session.feed("메뉴에서 파일을 선택하면")
    list(session.generate())
    return torch.tensor([session.ids])


@pytest.fixture(scope="module")
def reference(demo, sample):
    return predictions(demo, sample)


# The bounds: half precision agrees on >= 99% of top-1 choices and keeps perplexity within 0.5%;
# int8 >= 95% and 3%.  bfloat16 misses the 99% (98.3% measured), which is why `auto` never picks it.
@pytest.mark.parametrize("dtype, quantize, agreement, perplexity_within", [
    ("float16", "none", 0.99, 0.005),
    ("float32", "int8", 0.95, 0.03),
    ("bfloat16", "none", 0.97, 0.005),
])
def test_paths_keep_the_models_choices(sample, reference, dtype, quantize, agreement, perplexity_within):
    loaded = load_model(str(DEMO_MODEL_DIR), "cpu", dtype, quantize)
    top1, ppl = predictions(loaded, sample)
    ref_top1, ref_ppl = reference
    assert (top1 == ref_top1).float().mean() >= agreement
    assert abs(ppl - ref_ppl) / ref_ppl <= perplexity_within


# The lean step runs each path's own kernels: it must give what the model's own forward gives on that path,
# fed the same chunks (int8 quantizes activations per call, so a prefill and single steps differ by design).
@pytest.mark.parametrize("dtype, quantize, tolerance", [
    ("float32", "none", 1e-4), ("float16", "none", 2e-2), ("bfloat16", "none", 5e-2), ("float32", "int8", 1e-3),
])
def test_lean_step_equals_the_models_forward_on_each_path(dtype, quantize, tolerance):
    loaded = load_model(str(DEMO_MODEL_DIR), "cpu", dtype, quantize)
    lean, hub = StaticRunner(loaded.model, loaded.device), HubRunner(loaded.model, loaded.device)
    ids = loaded.tokenizer.encode("대한민국의 모든 국민은 법 앞에 평등하다.")
    chunks = [ids[:5], ids[5:], *([token] for token in loaded.tokenizer.encode(" 누구든지 성별 종교"))]
    with torch.inference_mode():
        for chunk in chunks:
            torch.testing.assert_close(lean.run(chunk), hub.run(chunk), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("turn", ["blocks out_in", "every matrix the other way"])
def test_other_layouts_write_what_generate_writes_on_the_models_own(demo, new_session, hf_greedy, turn):
    """The faster layouts are the same numbers: float32 greedy ids with the blocks as nn.Linear (and the output
    projection as an [in, out] Conv1D of its own) equal generate's over the model as it was saved."""
    prompt = "대한민국의 모든 국민은"
    saved = dataclasses.replace(demo, model=GPT2LMHeadModel.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval())  # as saved
    expected = hf_greedy(saved, prompt, 40, repetition_penalty=2.0)
    turned = dataclasses.replace(demo, model=GPT2LMHeadModel.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval())
    shapes = precision.matrix_shapes(turned.model)
    assert set(shapes.values()) == {"in_out", "out_in"}
    head = turned.model.lm_head
    if turn == "blocks out_in":
        precision.arrange(turned.model, {})  # a shape it leaves out goes out_in
        assert turned.model.lm_head is head
    else:
        other_way = {shape: "out_in" if own == "in_out" else "in_out" for shape, own in shapes.items()}
        precision.arrange(turned.model, other_way)
        assert isinstance(turned.model.lm_head, Conv1D) and turned.model.lm_head.weight.shape == head.weight.t().shape
        assert turned.model.transformer.wte.weight is head.weight  # the embedding keeps its rows
        assert sum(isinstance(m, Conv1D) for m in turned.model.modules()) == 1
    assert not any(isinstance(m, Conv1D) for m in turned.model.transformer.modules())
    session = new_session(turned, greedy=True, max_new_tokens=40, stop=())
    session.feed(prompt)
    list(session.generate())
    assert session.ids[len(demo.tokenizer.encode(prompt)):] == expected
    ids = torch.tensor([session.ids])
    with torch.inference_mode():
        torch.testing.assert_close(turned.model(ids).logits, saved.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_the_layout_verdicts_are_measured_once_per_precision_and_shape_then_remembered(tmp_path):
    cache, cpu = tmp_path / "precision.json", torch.device("cpu")
    shapes = {(64, 256): "in_out", (256, 64): "in_out", (64, 4000): "out_in"}
    layouts, why = precision.fast_layouts("float16", cpu, shapes, cache)
    assert set(layouts) == set(shapes) and set(layouts.values()) <= {"in_out", "out_in"}
    assert why.count("measured now (in_out ") == 3 and "64x4000 " in why
    again, why_again = precision.fast_layouts("float16", cpu, shapes, cache)
    assert again == layouts and why_again.count("measured before") == 3
    assert "measured now" in precision.fast_layouts("bfloat16", cpu, {(64, 256): "in_out"}, cache)[1]  # its own
    assert precision.fast_layouts("int8", cpu, shapes, cache)[0] == dict.fromkeys(shapes, "out_in")
    assert len(json.loads(cache.read_text())) == 4
    assert precision.layout_summary({(1, 2): "out_in", (2, 1): "out_in"}) == "out_in"
    assert precision.layout_summary({(2, 1): "out_in", (1, 2): "in_out"}) == "1x2 in_out, 2x1 out_in"


def test_a_layout_other_than_the_matrix_own_must_be_five_percent_faster(tmp_path, monkeypatch):
    timings = {"in_out": 1.0, "out_in": 0.97}
    monkeypatch.setattr(precision, "measure_layouts", lambda *_: dict(timings))
    cache, cpu = tmp_path / "precision.json", torch.device("cpu")
    assert precision.fast_layouts("float32", cpu, {(8, 16): "in_out"}, cache)[0] == {(8, 16): "in_out"}
    timings["out_in"] = 0.94
    assert precision.fast_layouts("float32", cpu, {(16, 8): "in_out"}, cache)[0] == {(16, 8): "out_in"}
    timings.update(in_out=0.97, out_in=1.0)
    assert precision.fast_layouts("float32", cpu, {(8, 800): "out_in"}, cache)[0] == {(8, 800): "out_in"}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_path_with_float32_attention_and_prefill_keeps_its_numbers(dtype):
    """A half path whose cache, attention and prefill products are float32 (where that is faster) agrees with the
    model's own forward as closely as its all-half step does, through a prefill, single steps, a crop and a re-run."""
    loaded = load_model(str(DEMO_MODEL_DIR), "cpu", dtype)
    upcast = StaticRunner(loaded.model, loaded.device, ops=OpPrecision(attention=torch.float32, prefill=torch.float32))
    assert upcast.upcast and upcast.keys.dtype == torch.float32
    ids = loaded.tokenizer.encode("대한민국의 모든 국민은 법 앞에 평등하다. 누구든지 성별 종교 또는 사회적 신분에 의하여")
    full = torch.tensor([ids])
    with torch.inference_mode():
        reference = loaded.model(full).logits[0].float()
        upcast.run(ids[:6])
        for n in range(6, len(ids)):
            torch.testing.assert_close(upcast.run([ids[n]]), reference[n], atol=5e-2, rtol=5e-2)
        upcast.crop(8)
        torch.testing.assert_close(upcast.run(ids[8:12]), reference[11], atol=5e-2, rtol=5e-2)


def test_the_attention_and_prefill_verdicts_are_measured_once_then_remembered(tmp_path):
    cache, cpu = tmp_path / "precision.json", torch.device("cpu")
    dtype, why = precision.fast_attention("float16", cpu, 4, 16, cache)
    assert dtype in ("float16", "float32") and why.startswith("measured now (float16 ")
    assert precision.fast_attention("float16", cpu, 4, 16, cache) == (dtype, why.replace("measured now", "measured before"))
    assert precision.fast_attention("float32", cpu, 4, 16, cache)[0] == "float32"  # nothing to measure
    assert precision.fast_attention("int8", cpu, 4, 16, cache)[0] == "float32"
    assert len(json.loads(cache.read_text())) == 1
    prefill, why = precision.fast_prefill("float16", cpu, 32, "out_in", cache)
    assert prefill in ("", "float32") and why.startswith("measured now (float16 ")
    assert precision.fast_prefill("float16", cpu, 32, "out_in", cache)[1].startswith("measured before")
    assert precision.fast_prefill("float32", cpu, 32, "out_in", cache) == ("", "the weights' own")
    assert len(json.loads(cache.read_text())) == 2
    # An entry korepl did not write so (an older form, a hand edit) is measured afresh, not trusted or fatal.
    stored = json.loads(cache.read_text())
    for key in stored:
        stored[key] = {"choice": "float64", "ms": "made up"} if key.startswith("attention") else ["junk"]
    cache.write_text(json.dumps(stored))
    assert precision.fast_attention("float16", cpu, 4, 16, cache)[1].startswith("measured now")
    assert precision.fast_prefill("float16", cpu, 32, "out_in", cache)[1].startswith("measured now")


def test_int8_covers_every_linear_layer_and_the_output_projection(demo):
    loaded = load_model(str(DEMO_MODEL_DIR), "cpu", "float32", "int8")
    assert loaded.precision == "int8"
    modules = list(loaded.model.modules())
    assert not any(isinstance(m, (Conv1D, torch.nn.Linear)) for m in modules)
    quantized = [m for m in modules if type(m).__name__ == "Linear" and "quantized" in type(m).__module__]
    assert len(quantized) == 4 * len(demo.model.transformer.h) + 1  # qkv, proj, fc, proj per layer; lm_head


SHAPE = dict(layers=2, heads=4, positions=128)  # with hidden 64 and vocab 512: a tiny GPT-2, quick to measure


def test_auto_measures_the_whole_step_once_then_remembers(tmp_path):
    cache = tmp_path / "precision.json"
    path, why = precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    assert path in precision.AUTO_PATHS and why.startswith("auto: measured now") and "(whole step: float32 " in why
    key = f"auto | {precision.device_name(torch.device('cpu'))} | 64x2x512"  # the CPU model and the model's shape
    entry = json.loads(cache.read_text())[key]
    assert entry["path"] == path and entry["torch"] == torch.__version__ and entry["measured"] > time.time() - 600
    assert set(entry["step_ms"]) == {"float32", "float16", "int8"} and entry["ms"] in why
    again, why_again = precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    assert again == path and why_again.startswith("auto: measured before on this CPU")
    # Another depth is another model: its own verdict.
    deeper = precision.resolve("auto", "none", "cpu", 64, 512, cache, layers=3, heads=4)
    assert deeper[1].startswith("auto: measured now")


def test_the_step_is_scaled_to_the_models_layers(monkeypatch):
    """One layer is measured; the model's step counts it once per layer, and the output projection once."""
    def timed(runner, flush):  # given times per part: the layer 3 ms, the head 10 ms, neither 0.5 ms
        layer, projection = bool(runner.layers), runner.lm_head is not precision._no_projection
        return {(True, False): 0.003, (False, True): 0.010, (False, False): 0.0005}[(layer, projection)]

    monkeypatch.setattr(precision, "_timed_step", timed)
    timings, halves = precision.measure_step(precision.StepShape(64, 12, 4, 512, 128))
    assert timings == pytest.approx({"float32": 40.0, "float16": 40.0, "int8": 40.0})  # 10 + 12 x (3 - 0.5)
    assert halves == (timings, timings)


def fake_measure(monkeypatch, *figures):
    """measure_step returning each of `figures` in turn ((timings, its two halves)); the list of shapes asked for."""
    asked = []

    def measure_step(shape, cache=None):
        asked.append(shape)
        timings, halves = figures[min(len(asked), len(figures)) - 1]
        return dict(timings), tuple(dict(half) for half in halves)

    monkeypatch.setattr(precision, "measure_step", measure_step)
    return asked


def steady(timings):
    return timings, (timings, timings)


FAST_HALF = {"float32": 24.0, "float16": 8.0, "int8": 9.0}


def test_an_old_verdict_is_measured_again(monkeypatch, tmp_path):
    cache = tmp_path / "precision.json"
    asked = fake_measure(monkeypatch, steady(FAST_HALF))
    assert precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)[0] == "float16" and len(asked) == 1
    stored = json.loads(cache.read_text())
    (key,) = stored
    stored[key]["measured"] -= 29 * 86400
    cache.write_text(json.dumps(stored))
    assert precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)[1].startswith("auto: measured before")
    stored[key]["measured"] -= 2 * 86400  # 31 days old
    cache.write_text(json.dumps(stored))
    path, why = precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    assert (path, len(asked)) == ("float16", 2) and why.startswith("auto: measured now, again: it was 31 days old")
    assert json.loads(cache.read_text())[key]["measured"] > time.time() - 600


@pytest.mark.parametrize("change, reason", [
    ({"path": "float16", "step_ms": {"float32": 40.0, "float16": 56.0, "int8": 44.0}}, "does not hold together"),
    ({"path": "bfloat16"}, "does not hold together"),  # never chosen by auto
    ({"measured": None}, "does not hold together"),
    ({"torch": "1.0.0"}, "was measured on torch 1.0.0"),
])
def test_an_implausible_or_foreign_verdict_is_measured_again(monkeypatch, tmp_path, change, reason):
    """A stored verdict that its own figures contradict (float16 chosen over a faster float32), or that this torch did
    not measure, is measured again rather than trusted."""
    cache = tmp_path / "precision.json"
    asked = fake_measure(monkeypatch, steady(FAST_HALF))
    precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    stored = json.loads(cache.read_text())
    (key,) = stored
    stored[key].update(change)
    cache.write_text(json.dumps(stored))
    path, why = precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    assert (path, len(asked)) == ("float16", 2) and f"again: it {reason}" in why


def test_products_era_verdicts_are_dropped(monkeypatch, tmp_path):
    cache = tmp_path / "precision.json"
    old = f"{precision.cpu_model()} | torch {torch.__version__} | 64x512"
    cache.write_text(json.dumps({old: {"path": "int8", "ms": "float32 48.2 ms, float16 56.0 ms, int8 44.0 ms"}}))
    fake_measure(monkeypatch, steady(FAST_HALF))
    assert precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)[0] == "float16"
    assert old not in json.loads(cache.read_text())


@pytest.mark.parametrize("first, second, expected, why", [
    # The two halves of the rounds choose differently: measured again, the best of both kept.
    (({"float32": 20.0, "float16": 15.0, "int8": 30.0},
      ({"float32": 20.0, "float16": 15.0, "int8": 30.0}, {"float32": 21.0, "float16": 25.0, "int8": 30.0})),
     steady({"float32": 20.0, "float16": 25.0, "int8": 12.0}), "int8", "twice (the rounds disagreed)"),
    # A path's layers cost nothing, or less: noise, not a figure.
    (steady({"float32": 20.0, "float16": -3.0, "int8": 30.0}), steady({"float32": 20.0, "float16": 9.0, "int8": 30.0}),
     "float16", "twice (a path's layers came out costing nothing) (whole step: float32 20.0 ms, float16 9.0 ms"),
    (steady({"float32": 20.0, "float16": -3.0, "int8": 30.0}), steady({"float32": 20.0, "float16": -1.0, "int8": 30.0}),
     "float32", "float16 inf ms"),  # never a time: never chosen
])
def test_figures_that_look_implausible_are_measured_a_second_time(monkeypatch, tmp_path, first, second, expected, why):
    asked = fake_measure(monkeypatch, first, second)
    path, note = precision.resolve("auto", "none", "cpu", 64, 512, tmp_path / "p.json", **SHAPE)
    assert (path, len(asked)) == (expected, 2) and why in note


def test_figures_that_moved_far_from_the_last_ones_are_measured_a_second_time(monkeypatch, tmp_path):
    cache = tmp_path / "precision.json"
    asked = fake_measure(monkeypatch, steady(FAST_HALF), steady({"float32": 48.2, "float16": 56.0, "int8": 44.0}),
                         steady({"float32": 23.0, "float16": 7.5, "int8": 9.5}))
    precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    stored = json.loads(cache.read_text())
    (key,) = stored
    stored[key]["measured"] -= 40 * 86400
    cache.write_text(json.dumps(stored))
    path, why = precision.resolve("auto", "none", "cpu", 64, 512, cache, **SHAPE)
    assert len(asked) == 3 and path == "float16" and "twice (float32 moved from 24.0 ms)" in why
    assert json.loads(cache.read_text())[key]["step_ms"] == {"float32": 23.0, "float16": 7.5, "int8": 9.5}


@pytest.mark.parametrize("timings, expected", [
    ({"float32": 5.0, "float16": 7.0, "int8": 6.0}, "float32"),  # never slower than float32
    ({"float16": 5.0, "float32": 5.0, "int8": 5.0}, "float32"),  # nor merely as fast, whichever is measured first
    ({"float32": 5.0, "float16": 4.0, "int8": 2.0}, "int8"),
    ({"float32": 5.0, "float16": 1.0, "int8": 2.0}, "float16"),
])
def test_auto_takes_the_fastest_step_never_slower_than_float32(monkeypatch, tmp_path, timings, expected):
    """The decision alone, on given whole-step timings (the measuring itself is exercised above)."""
    fake_measure(monkeypatch, steady(timings))
    path, why = precision.resolve("auto", "none", "cpu", 64, 512, tmp_path / "p.json", **SHAPE)
    assert path == expected and why == f"auto: measured now (whole step: {precision.step_summary(timings)})"


def test_int8_on_a_gpu_is_refused():
    with pytest.raises(ValueError, match="CPU only"):
        precision.resolve("float32", "int8", "cuda", 64, 512, None)


@pytest.mark.parametrize("args", [["--quantize", "int8"], ["--dtype", "bfloat16"], ["--dtype", "auto"]])
def test_one_shot_on_each_path_prints_text_and_no_warnings(tmp_path, args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_STATE_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "korepl", "--demo", "--prompt", "대한민국의 모든 국민은",
                             "--max-new-tokens", "20", "--seed", "1", *args], capture_output=True, text=True,
                            env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip()
    # No deprecation notice, no warning: at most the line saying why it stopped.
    assert [line for line in result.stderr.splitlines() if not line.startswith("korepl: stopped at")] == []
