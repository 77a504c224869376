"""korepl on each precision path: decode speed, the step over the path's own products, a window slide; auto's pick."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.fixtures import drain, text_with_tokens
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.sections.decoding import Decoding
from benchmarks.sections.floor import Step, weight_matrices
from benchmarks.timing import best_of, timed
from benchmarks.workload import (PROMPT, best_step_seconds, context_text, greedy_settings, kept_tokens,
                                 korepl_continue, prefilled_session)
from korepl import precision
from korepl.loading import LoadedModel, load_model
from korepl.paths import state_dir
from korepl.runner import StaticRunner
from korepl.session import Session

PATH_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


@dataclass(frozen=True)
class PathRun(Result):
    floor_s: float
    step_s: float
    step_over_floor: float
    decode_tok_s: dict[int, float]
    vs_generate_fp32: dict[int, float]
    slide_s: float
    plain_step_near_window_end_s: float
    weight_bytes_per_token: int
    bandwidth_achieved_bytes_s: float


@dataclass(frozen=True)
class Paths(Result):
    timing: str
    by_path: dict[str, PathRun]
    fastest: str
    auto_step_ms: dict[str, float]  # what `--dtype auto` measures: the whole step per path (precision.measure_step)
    auto_would_choose: str
    auto_why: str
    step_context_tokens: int
    kept_tokens: int  # what a window slide re-prefills
    plain_step_at: int  # the context of the plain step a slide is compared with


def load_path(bench: Bench, path: str) -> LoadedModel:
    if path == "float32":
        return bench.loaded
    if path == "int8":
        return load_model(str(bench.folder), bench.device.type, "float32", "int8")
    return load_model(str(bench.folder), bench.device.type, path)


def path_products(loaded: LoadedModel) -> list[tuple[Callable, torch.Tensor]]:
    """One token's products with this path's own kernels: the lean runner's linear layers and the lm_head."""
    runner = StaticRunner(loaded.model, loaded.device)
    hidden, dtype = loaded.model.config.n_embd, runner.keys.dtype
    x, wide = (torch.randn(1, n, dtype=dtype, device=loaded.device) for n in (hidden, 4 * hidden))
    products = []
    for layer in runner.layers:
        products += [(layer.c_attn, x), (layer.attn_proj, x), (layer.c_fc, x), (layer.c_proj, wide)]
    return products + [(runner.lm_head, x)]


def path_floor_seconds(loaded: LoadedModel, repeats: int) -> float:
    products = path_products(loaded)

    def chain() -> None:
        for product, x in products:
            product(x)

    with torch.inference_mode():
        return best_of(chain, repeats, loaded.device)[0]


def slide_seconds(loaded: LoadedModel, repeats: int) -> tuple[float, float]:
    """(the step that overflows the window and re-prefills the kept part, a plain step near the window's end).

    Best of `repeats` after a warm-up, the two taking turns.
    """
    settings = greedy_settings(1)
    encode = Session(loaded, settings).encode
    full_view, near_full = text_with_tokens(encode, loaded.window), text_with_tokens(encode, loaded.window - 24)
    slide_times, plain_times = [], []
    for repeat in range(repeats + 1):
        sliding, plain = prefilled_session(loaded, full_view, settings), prefilled_session(loaded, near_full, settings)
        slide_s, _ = timed(lambda: drain(sliding), loaded.device)
        plain_s, _ = timed(lambda: drain(plain), loaded.device)
        if sliding.slides != 1 or plain.slides != 0:
            raise RuntimeError("the window did not slide exactly once, where it had to")
        if repeat:  # the first round is a warm-up
            slide_times.append(slide_s)
            plain_times.append(plain_s)
    return min(slide_times), min(plain_times)


def measure(bench: Bench, decoding: Decoding, step: Step) -> Paths:
    """float32 reuses the decode and step timings taken beside generate and in the step section."""
    plan, fp32 = bench.plan, bench.loaded
    int8 = bench.device.type == "cpu" and precision.int8_unavailable() is None  # torch may have dropped torch.ao
    paths = ("float32", "float16", "bfloat16") + (("int8",) if int8 else ())
    generate = {n: run.generate_tok_s for n, run in decoding.by_length.items()}
    matrix_elements = sum(w.numel() for _, w in weight_matrices(fp32.model))
    context = context_text(fp32, plan.step_context)
    results = {}
    for path in paths:
        loaded = load_path(bench, path)
        floor = path_floor_seconds(loaded, plan.floor_repeats)
        if path == "float32":
            decode = {n: run.korepl_tok_s for n, run in decoding.by_length.items()}
            step_s = step.korepl_step_s
        else:
            step_s, _ = best_step_seconds(loaded, context, plan.step_tokens, plan.repeats)
            decode = {}
            for n in plan.decode_lengths:
                best, _, _ = best_of(lambda: korepl_continue(loaded, PROMPT, n), plan.decode_repeats[n], bench.device)
                decode[n] = n / best
        slide, plain = slide_seconds(loaded, plan.repeats)
        weight_bytes = matrix_elements * PATH_BYTES[path]
        results[path] = PathRun(floor_s=floor, step_s=step_s, step_over_floor=step_s / floor, decode_tok_s=decode,
                                vs_generate_fp32={n: decode[n] / generate[n] for n in decode}, slide_s=slide,
                                plain_step_near_window_end_s=plain, weight_bytes_per_token=weight_bytes,
                                bandwidth_achieved_bytes_s=weight_bytes / step_s)
        del loaded
    fastest = max(results, key=lambda p: results[p].decode_tok_s[plan.decode_lengths[0]])
    auto, auto_ms, auto_why = auto_verdict(fp32)
    return Paths(timing=f"decode best of {plan.decode_repeats}; step best of {plan.repeats + 1}; "
                        f"floor best of {plan.floor_repeats}",
                 by_path=results, fastest=fastest, auto_step_ms=auto_ms, auto_would_choose=auto, auto_why=auto_why,
                 step_context_tokens=plan.step_context, kept_tokens=kept_tokens(fp32), plain_step_at=fp32.window - 24)


def auto_verdict(loaded: LoadedModel) -> tuple[str, dict[str, float], str]:
    """What `--dtype auto` would choose for this model here, measured afresh as load_model measures it (the whole
    step, not its products: on one AMD EPYC float16 had the fastest products and the slowest step), and why."""
    if loaded.device.type != "cpu":
        return "float16", {}, "half precision on the GPU"
    config = loaded.model.config
    shape = precision.StepShape(config.n_embd, config.n_layer, config.n_head, config.vocab_size, config.n_positions)
    path, timings, note = precision.auto_verdict(shape, None, state_dir() / "precision.json")
    return path, timings, f"the fastest whole step, never slower than float32{note}"


def rows(result: Paths) -> list[Row]:
    out = []
    for path, run in result.by_path.items():
        speeds = ", ".join(f"{run.decode_tok_s[n]:.1f} tok/s at {n} ({run.vs_generate_fp32[n]:.2f}× generate fp32)"
                           for n in run.decode_tok_s)
        out += [Row(f"path {path}: decode", speeds),
                Row(f"path {path}: step at ~{result.step_context_tokens} of context / its own products' floor",
                    f"{run.step_s * 1e3:.2f} / {run.floor_s * 1e3:.2f} ms = {run.step_over_floor:.2f}×",
                    f"bandwidth achieved {run.bandwidth_achieved_bytes_s / 1e9:.1f} GB/s"),
                Row(f"path {path}: window slide (the step that re-prefills {result.kept_tokens})",
                    f"{run.slide_s * 1e3:.0f} ms",
                    f"{run.slide_s / run.plain_step_near_window_end_s:.1f}× a plain step at {result.plain_step_at}")]
    auto = result.auto_step_ms
    figures = (f"auto's whole step (one layer measured, scaled to the model's): {precision.step_summary(auto)}; "
               "the step measured above: " + ", ".join(f"{p} {r.step_s * 1e3:.1f} ms" for p, r in result.by_path.items()
                                                     if p in auto) + "; ") if auto else ""
    out.append(Row("fastest path here / what --dtype auto would choose",
                   f"{result.fastest} / {result.auto_would_choose}", f"{figures}why: {result.auto_why}"))
    return out


SECTION = Section("paths", measure, rows)
