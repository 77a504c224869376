"""What transformers itself offers for speed, `generate` over its static cache with the forward compiled, against
its default `generate` and korepl in the same run, at each precision that matters on the device."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from benchmarks.fixtures import hf_reference
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.sections.paths import load_path
from benchmarks.timing import interleaved
from benchmarks.workload import PROMPT, REPETITION_PENALTY, greedy_settings, korepl_task, stock
from korepl.session import Session


@dataclass(frozen=True)
class StaticRun(Result):
    new_tokens: int
    timing: str
    first_call_s: float  # generate's first static call compiles the forward
    static_tok_s: float
    generate_tok_s: float  # its default, dynamic cache
    korepl_tok_s: float  # korepl's eager step on the same precision
    korepl_vs_static: float
    static_vs_generate: float
    same_ids: bool  # static generate's ids == dynamic generate's == korepl's
    static_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class HfStatic(Result):
    by_precision: dict[str, StaticRun]


def compile_everywhere():
    """transformers compiles a static-cache generate on accelerators only, unless its config says otherwise."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True  # the switch transformers reads (not an __init__ argument in 5.x)
    return config


def measure(bench: Bench) -> HfStatic:
    plan, device = bench.plan, bench.device
    precisions = ("float32", "float16", "bfloat16") if device.type == "cuda" else ("float32",)
    n, repeats = plan.decode_lengths[0], plan.decode_repeats[plan.decode_lengths[0]]
    runs = {}
    for precision in precisions:
        loaded = load_path(bench, precision)
        baseline = stock(loaded, bench.folder, precision)  # transformers' own model, its own layouts
        prompt_ids = Session(loaded, greedy_settings(1)).encode(PROMPT)
        config = compile_everywhere()

        def static() -> list[int]:
            return hf_reference(baseline, prompt_ids, n, repetition_penalty=REPETITION_PENALTY,
                                cache_implementation="static", compile_config=config)

        def dynamic() -> list[int]:
            return hf_reference(baseline, prompt_ids, n, repetition_penalty=REPETITION_PENALTY)

        began = time.perf_counter()
        static()
        first_call = time.perf_counter() - began
        timed = interleaved({"static": static, "generate": dynamic, "korepl": korepl_task(loaded, PROMPT, n)},
                            repeats, device)
        (s_best, s_times, s_ids), (g_best, _, g_ids), (k_best, _, session) = (timed[k] for k in
                                                                            ("static", "generate", "korepl"))
        runs[precision] = StaticRun(
            new_tokens=n, timing=f"best of {repeats}, the three taking turns, after a warm-up", first_call_s=first_call,
            static_tok_s=n / s_best, generate_tok_s=n / g_best, korepl_tok_s=n / k_best,
            korepl_vs_static=s_best / k_best, static_vs_generate=g_best / s_best, same_ids=s_ids == g_ids == session.ids[len(prompt_ids):],
            static_times_s=s_times)
        del loaded, baseline
    return HfStatic(runs)


def rows(result: HfStatic) -> list[Row]:
    out = []
    for precision, run in result.by_precision.items():
        out += [Row(f"decode {run.new_tokens} tokens, HF generate {precision}, static cache, compiled",
                    f"{run.static_tok_s:.1f} tok/s",
                    f"{run.static_vs_generate:.2f}× its default generate ({run.generate_tok_s:.1f} tok/s); first call "
                    f"(compiles) {run.first_call_s:.1f} s; same ids: {run.same_ids}"),
                Row(f"decode {run.new_tokens} tokens, korepl {precision} (eager step) / HF static compiled",
                    f"{run.korepl_vs_static:.2f}×", f"korepl {run.korepl_tok_s:.1f} tok/s")]
    return out


SECTION = Section("hf_static", measure, rows)
