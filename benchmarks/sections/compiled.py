"""The compiled one-token step (korepl/compiled.py) beside the eager one on each precision path, both over the
path's own products; and how long compiling takes in a fresh process, cold (an empty inductor cache) and warm."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.child import run_python
from benchmarks.fixtures import drain
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section, Skipped
from benchmarks.sections.paths import load_path, path_products
from benchmarks.timing import interleaved
from benchmarks.workload import context_text, greedy_settings, prefilled_session
from korepl import precision
from korepl.compiled import CompiledStep, HubStep, for_model
from korepl.loading import LoadedModel

COMPILE_TIME_PATH = "float32"  # the one path whose compile is timed cold and warm, to keep the run short


@dataclass(frozen=True)
class CompiledPath(Result):
    layout: str  # the products' weight layout on this path (korepl.precision.fast_layouts' verdicts)
    kind: str  # which compiled step: GPT2Step (korepl's own step) or HubStep (the model's forward, static cache)
    eager_step_s: float
    compiled_step_s: float | None  # None where this path cannot be compiled (`note` says why)
    products_s: float  # one token's matrix–vector products alone, this path's own product calls
    eager_over_products: float
    compiled_over_products: float | None
    compiled_over_eager: float | None
    state: str  # CompiledStep's state after the timings: "compiled" means every compiled step stayed compiled
    note: str  # CompiledStep's note: its own race's figures, or why it could not compile
    compile_in_process_s: float | None  # compile_now here less its race (float32: warm from the children's cache)
    eager_times_s: list[float] = field(repr=False)
    compiled_times_s: list[float] = field(repr=False)
    products_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class CompileTime(Result):
    path: str
    cold_s: float  # a fresh process, an empty TORCHINDUCTOR_CACHE_DIR
    warm_s: float  # a fresh process, the same folder again: dynamo traces anew, inductor's artefacts load
    race_s: dict[str, float]  # what compile_now spent timing the two steps against each other (left out above)
    notes: dict[str, str]


@dataclass(frozen=True)
class Compiled(Result):
    timing: str
    context_tokens: int
    tokens: int
    by_path: dict[str, CompiledPath]
    compile_time: CompileTime


def step_for(loaded: LoadedModel, cache_dir: Path) -> CompiledStep:
    """korepl's own GPT-2 step where it compiles (the CPU); on a GPU, the model's forward over a static cache on CUDA
    graphs (what korepl runs for other models there), so that the GPU's figures show both."""
    step = for_model(loaded.model, loaded.device, "on", cache_dir, loaded.ops)
    if step.unsupported() and loaded.device.type == "cuda":
        step = HubStep(loaded.model, loaded.device, "on", cache_dir, window=loaded.window)
    return step


def timed_compile(step: CompiledStep) -> tuple[float, float]:
    """(seconds the compile took, seconds compile_now spent on the rest: mostly its race of the two steps)."""
    started = time.perf_counter()
    step.compile_now()
    return step.compile_seconds, time.perf_counter() - started - step.compile_seconds


def compile_child(folder: str, device: str, path: str, cache_dir: str) -> None:
    """Run in a fresh process: load `path`, compile its step into `cache_dir`, print the seconds as JSON."""
    from korepl.loading import load_model

    loaded = load_model(folder, device, path)
    step = step_for(loaded, Path(cache_dir))
    seconds, race = timed_compile(step)
    print(json.dumps({"seconds": seconds, "race_s": race, "state": step.state, "note": step.note}))


def measure_compile_time(bench: Bench, cache_dir: Path) -> CompileTime:
    code = (f"from benchmarks.sections.compiled import compile_child; compile_child({str(bench.folder)!r}, "
            f"{bench.device.type!r}, {COMPILE_TIME_PATH!r}, {str(cache_dir)!r})")
    runs = {}
    for kind in ("cold", "warm"):  # the same folder: empty the first time, holding the first run's artefacts after
        runs[kind] = json.loads(run_python(code, bench.threads)[2].strip().splitlines()[-1])
        if runs[kind]["state"] != "compiled":
            raise RuntimeError(f"the {kind} compile did not compile: {runs[kind]['note']}")
    return CompileTime(path=COMPILE_TIME_PATH, cold_s=runs["cold"]["seconds"], warm_s=runs["warm"]["seconds"],
                       race_s={k: r["race_s"] for k, r in runs.items()}, notes={k: r["note"] for k, r in runs.items()})


def time_path(bench: Bench, loaded: LoadedModel, context: str, cache_dir: Path) -> CompiledPath:
    plan, tokens = bench.plan, bench.plan.step_tokens
    step, compile_s = step_for(loaded, cache_dir), None
    kind, why_not = type(step).__name__, step.unsupported()
    if why_not:
        step = None
    else:
        compile_s, _ = timed_compile(step)
        if not step.ready:
            raise RuntimeError(f"the {loaded.precision} step did not compile: {step.describe()}")
    products = path_products(loaded)

    def products_chain() -> None:
        with torch.inference_mode():
            for _ in range(tokens):
                for product, x in products:
                    product(x)

    def writing(view: LoadedModel):  # (prepare, run): a session prefilled untimed, then `tokens` steps
        def run(session) -> None:
            drain(session)
            if session.last_ending.new_tokens != tokens:
                raise RuntimeError(f"asked for {tokens} tokens, got {session.last_ending.new_tokens}")

        return (lambda: prefilled_session(view, context, greedy_settings(tokens)), run)

    contenders = {"eager": writing(dataclasses.replace(loaded, compiled=None))}
    if step is not None:
        contenders["compiled"] = writing(dataclasses.replace(loaded, compiled=step))
    contenders["products"] = products_chain
    timings = interleaved(contenders, plan.compiled_repeats, bench.device)
    per_token = {name: [t / tokens for t in times] for name, (_, times, _) in timings.items()}
    eager, floor = min(per_token["eager"]), min(per_token["products"])
    compiled = min(per_token["compiled"]) if step is not None else None
    return CompiledPath(layout=loaded.layout, kind=kind, eager_step_s=eager, compiled_step_s=compiled,
                        products_s=floor,
                        eager_over_products=eager / floor,
                        compiled_over_products=compiled / floor if compiled is not None else None,
                        compiled_over_eager=compiled / eager if compiled is not None else None,
                        state=step.state if step is not None else "eager",
                        note=step.note if step is not None else why_not,
                        compile_in_process_s=compile_s, eager_times_s=per_token["eager"],
                        compiled_times_s=per_token.get("compiled", []), products_times_s=per_token["products"])


def measure(bench: Bench) -> Compiled | Skipped:
    """Compile time first (its children fill the inductor folder that this process's float32 compile then reads)."""
    plan = bench.plan
    if why_not := step_for(bench.loaded, Path(tempfile.gettempdir())).unsupported():
        return Skipped(f"the compiled step cannot run here: {why_not}")
    int8 = bench.device.type == "cpu" and precision.int8_unavailable() is None
    paths = [p for p in plan.compiled_paths if p != "int8" or int8]
    cache_dir = Path(tempfile.mkdtemp(prefix="korepl-bench-inductor-"))
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # CompiledStep sets it for inductor; put back afterwards
    try:
        compile_time = measure_compile_time(bench, cache_dir)
        context = context_text(bench.loaded, plan.step_context)
        by_path = {}
        for path in paths:
            by_path[path] = time_path(bench, load_path(bench, path), context, cache_dir)
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
        with contextlib.suppress(OSError):
            shutil.rmtree(cache_dir)
    return Compiled(timing=f"best of {plan.compiled_repeats} after a warm-up, eager, compiled and products taking "
                           f"turns, each {plan.step_tokens} tokens", context_tokens=plan.step_context,
                    tokens=plan.step_tokens, by_path=by_path, compile_time=compile_time)


def rows(result: Compiled) -> list[Row]:
    out = []
    for path, run in result.by_path.items():
        ms = run.eager_step_s * 1e3, run.products_s * 1e3
        if run.compiled_step_s is None:
            out.append(Row(f"compiled step, {path}: eager / its products ({run.layout}) at ~{result.context_tokens} "
                           f"of context", f"{ms[0]:.2f} / {ms[1]:.2f} ms = {run.eager_over_products:.2f}×",
                           f"not compiled: {run.note}"))
            continue
        out.append(Row(f"compiled step ({run.kind}), {path}: compiled / eager / its products ({run.layout}) at "
                       f"~{result.context_tokens} of context",
                       f"{run.compiled_step_s * 1e3:.2f} / {ms[0]:.2f} / {ms[1]:.2f} ms",
                       f"compiled {run.compiled_over_products:.2f}×, eager {run.eager_over_products:.2f}× the "
                       f"products; compiled ÷ eager {run.compiled_over_eager:.2f}"
                       + ("" if run.state == "compiled" else f" ({run.state}: {run.note})")))
    ct = result.compile_time
    out.append(Row(f"compiled step: compile time, {ct.path}, a fresh process (compile_now less its race)",
                   f"cold {ct.cold_s:.1f} s / warm {ct.warm_s:.1f} s",
                   f"cold: empty inductor cache; warm: the same cache again ({ct.cold_s / ct.warm_s:.1f}× faster)"))
    return out


SECTION = Section("compiled", measure, rows)
