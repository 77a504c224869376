"""The floor (one token's matrix–vector products alone), korepl's step over it, and the memory bandwidth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.timing import best_of, timed
from benchmarks.workload import best_step_seconds, context_text


@dataclass(frozen=True)
class Floor(Result):
    timing: str
    in_out_x_at_W_s: float
    out_in_F_linear_s: float
    as_stored_s: float  # each kind of matrix in the layout the loaded model keeps (korepl.precision.arrange)
    in_out_by_kind_s: dict[str, float]
    out_in_by_kind_s: dict[str, float]
    weight_bytes_per_token: int
    matrices: int

    @property
    def best_layout_s(self) -> float:
        return min(self.in_out_x_at_W_s, self.out_in_F_linear_s, self.as_stored_s)


@dataclass(frozen=True)
class Step(Result):
    context_tokens: int
    tokens: int
    timing: str
    korepl_step_s: float
    korepl_tok_s: float
    floor_as_stored_s: float
    floor_best_layout_s: float
    overhead_vs_stored_floor: float
    overhead_vs_best_floor: float
    times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class Bandwidth(Result):
    buffer_bytes: int
    timing: str
    sum_read_bytes_s: float
    copy_read_write_bytes_s: float
    korepl_achieved_bytes_s: float
    achieved_share: float
    floor_achieved_bytes_s: float
    upper_bound_tok_s: float
    sum_times_s: list[float] = field(repr=False)
    copy_times_s: list[float] = field(repr=False)


def matrix_layers(model) -> list[tuple[str, object]]:
    """(kind, layer) of every matrix one token multiplies, in the order a step reads them."""
    layers = []
    for block in model.transformer.h:
        layers += [("c_attn", block.attn.c_attn), ("attn c_proj", block.attn.c_proj), ("c_fc", block.mlp.c_fc),
                   ("mlp c_proj", block.mlp.c_proj)]
    return layers + [("lm_head", model.lm_head)]


def weight_matrices(model) -> list[tuple[str, torch.Tensor]]:
    """Every matrix one token multiplies, as [in, out] (Conv1D's layout), whichever layout the model keeps it in
    (korepl.precision.arrange)."""
    return [(kind, layer.weight if isinstance(layer, Conv1D) else layer.weight.t())
            for kind, layer in matrix_layers(model)]


def stored_in_out(model) -> dict[str, bool]:
    """Per kind of matrix, whether the model keeps it [in, out] (each kind has one shape, so one layout)."""
    return {kind: isinstance(layer, Conv1D) for kind, layer in matrix_layers(model)}


def time_products(products: list[tuple[str, Callable, torch.Tensor, torch.Tensor]], repeats: int,
                  device: torch.device) -> tuple[float, dict[str, float]]:
    """Best total seconds over all products, and each kind's best sum; the chain streams weights from memory."""
    best_total, best_kind = float("inf"), {}
    for repeat in range(repeats + 1):  # the first pass is a warm-up
        per_kind: dict[str, float] = {}
        for kind, op, x, w in products:
            seconds, _ = timed(lambda: op(x, w), device)
            per_kind[kind] = per_kind.get(kind, 0.0) + seconds
        if repeat:
            best_total = min(best_total, sum(per_kind.values()))
            best_kind = {k: min(v, best_kind.get(k, float("inf"))) for k, v in per_kind.items()}
    return best_total, best_kind


def measure_floor(bench: Bench) -> Floor:
    device, model, repeats = bench.device, bench.loaded.model, bench.plan.floor_repeats
    matrices = weight_matrices(model)
    inputs = {w.shape[0]: torch.randn(1, w.shape[0], device=device) for _, w in matrices}
    with torch.inference_mode():
        in_out = [(kind, torch.matmul, inputs[w.shape[0]], w.contiguous()) for kind, w in matrices]
        out_in = [(kind, F.linear, inputs[w.shape[0]], w.t().contiguous()) for kind, w in matrices]
        in_out_s, in_out_kind = time_products(in_out, repeats, device)
        out_in_s, out_in_kind = time_products(out_in, repeats, device)
    del in_out, out_in
    stored = stored_in_out(model)
    stored_s = sum(in_out_kind[k] if stored[k] else out_in_kind[k] for k in in_out_kind)
    # every matrix, and one row each of wte and wpe
    weight_bytes = sum(w.numel() * w.element_size() for _, w in matrices) + 2 * model.config.n_embd * 4
    return Floor(timing=f"best of {repeats} passes over all matrices after a warm-up pass", in_out_x_at_W_s=in_out_s,
                 out_in_F_linear_s=out_in_s, as_stored_s=stored_s, in_out_by_kind_s=in_out_kind,
                 out_in_by_kind_s=out_in_kind, weight_bytes_per_token=weight_bytes, matrices=len(matrices))


def floor_rows(floor: Floor) -> list[Row]:
    in_out_s, out_in_s = floor.in_out_x_at_W_s, floor.out_in_F_linear_s
    faster = "[in,out] x @ W" if in_out_s < out_in_s else "[out,in] F.linear"
    return [Row("floor: all matrix–vector products, [in,out] layout (x @ W)", f"{in_out_s * 1e3:.2f} ms",
                f"{in_out_s / out_in_s:.2f}× the [out,in] time"),
            Row("floor: all matrix–vector products, [out,in] layout (F.linear)", f"{out_in_s * 1e3:.2f} ms",
                f"faster layout: {faster}"),
            Row("floor: as the loaded model keeps them (each shape's faster layout, as measured at load)",
                f"{floor.as_stored_s * 1e3:.2f} ms"),
            Row("weights read per token (fp32 matrices + embedding rows)",
                f"{floor.weight_bytes_per_token / 2**20:.1f} MiB")]


def measure_step(bench: Bench, floor: Floor) -> Step:
    plan = bench.plan
    step, times = best_step_seconds(bench.loaded, context_text(bench.loaded, plan.step_context), plan.step_tokens,
                                    plan.repeats)
    return Step(context_tokens=plan.step_context, tokens=plan.step_tokens, timing=f"best of {len(times)}",
                korepl_step_s=step, korepl_tok_s=1 / step, floor_as_stored_s=floor.as_stored_s,
                floor_best_layout_s=floor.best_layout_s, overhead_vs_stored_floor=step / floor.as_stored_s,
                overhead_vs_best_floor=step / floor.best_layout_s, times_s=times)


def step_rows(step: Step) -> list[Row]:
    return [Row(f"korepl step at ~{step.context_tokens} tokens of context", f"{step.korepl_step_s * 1e3:.2f} ms/token",
                f"{step.korepl_tok_s:.1f} tok/s"),
            Row("step overhead = korepl step / floor (as stored)", f"{step.overhead_vs_stored_floor:.2f}×",
                f"{step.overhead_vs_best_floor:.2f}× the best-layout floor")]


def measure_bandwidth(bench: Bench, floor: Floor, step: Step) -> Bandwidth:
    device, size = bench.device, bench.plan.bandwidth_bytes
    buffer = torch.ones(size // 4, dtype=torch.float32, device=device)
    sum_s, sum_times, _ = best_of(lambda: torch.sum(buffer), 5, device)
    target = torch.empty_like(buffer)
    copy_s, copy_times, _ = best_of(lambda: target.copy_(buffer), 5, device)
    del buffer, target
    read_bw = size / sum_s
    weight_bytes = floor.weight_bytes_per_token
    achieved = weight_bytes / step.korepl_step_s
    return Bandwidth(buffer_bytes=size, timing="best of 5 after a warm-up", sum_read_bytes_s=read_bw,
                     copy_read_write_bytes_s=2 * size / copy_s,  # read + write
                     korepl_achieved_bytes_s=achieved, achieved_share=achieved / read_bw,
                     floor_achieved_bytes_s=weight_bytes / floor.as_stored_s, upper_bound_tok_s=read_bw / weight_bytes,
                     sum_times_s=sum_times, copy_times_s=copy_times)


def bandwidth_rows(bw: Bandwidth) -> list[Row]:
    read_bw = bw.sum_read_bytes_s
    return [Row(f"memory read bandwidth (torch.sum over {bw.buffer_bytes / 2**30:g} GiB fp32)",
                f"{read_bw / 1e9:.1f} GB/s", f"copy: {bw.copy_read_write_bytes_s / 1e9:.1f} GB/s read+write"),
            Row("bandwidth achieved by korepl (weight bytes × tok/s)", f"{bw.korepl_achieved_bytes_s / 1e9:.1f} GB/s",
                f"{bw.achieved_share:.0%} of measured bandwidth"),
            Row("bandwidth achieved by the floor's products alone", f"{bw.floor_achieved_bytes_s / 1e9:.1f} GB/s",
                f"{bw.floor_achieved_bytes_s / read_bw:.0%} of measured bandwidth"),
            Row("upper bound tok/s = bandwidth / weight bytes", f"{bw.upper_bound_tok_s:.1f} tok/s",
                f"korepl reaches {bw.achieved_share:.0%}")]


FLOOR = Section("floor", measure_floor, floor_rows)
STEP = Section("step", measure_step, step_rows)
BANDWIDTH = Section("bandwidth", measure_bandwidth, bandwidth_rows)
