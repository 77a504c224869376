"""The profile of korepl's decode step at ~100 tokens of context: the top operations by self CPU time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.fixtures import drain
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.workload import context_text, greedy_settings, korepl_step_seconds, prefilled_session

TOP = 12


@dataclass(frozen=True)
class Op:
    op: str
    self_cpu_us_per_step: float
    calls_per_step: float
    share_of_op_time: float


@dataclass(frozen=True)
class Profile(Result):
    context_tokens: int
    steps: int
    wall_s_per_step_under_profiler: float
    ops_self_cpu_s_per_step: float
    top_ops_by_self_cpu: list[Op]


def measure(bench: Bench) -> Profile:
    from torch.profiler import ProfilerActivity, profile

    loaded, plan = bench.loaded, bench.plan
    context = context_text(loaded, plan.step_context)
    steps = plan.profile_steps
    korepl_step_seconds(loaded, context, steps)  # warm-up
    session = prefilled_session(loaded, context, greedy_settings(steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loaded.device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        drain(session)
    wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_self = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [Op(e.key, e.self_cpu_time_total / steps, e.count / steps, e.self_cpu_time_total / total_self)
           for e in events[:TOP]]
    return Profile(context_tokens=plan.step_context, steps=steps, wall_s_per_step_under_profiler=wall / steps,
                   ops_self_cpu_s_per_step=total_self / 1e6 / steps, top_ops_by_self_cpu=ops)


def rows(_: Profile) -> list[Row]:
    return []  # its own table, after the main one


def lines(p: Profile) -> list[str]:
    return [f"\nProfile of one korepl decode step at ~{p.context_tokens} tokens of context "
            f"(torch.profiler, {p.steps} steps averaged; wall under the profiler "
            f"{p.wall_s_per_step_under_profiler * 1e3:.2f} ms/step, "
            f"ops' self time {p.ops_self_cpu_s_per_step * 1e3:.2f} ms/step):",
            "| op | self CPU µs/step | calls/step | share of op time |",
            "|---|---|---|---|",
            *(f"| {o.op} | {o.self_cpu_us_per_step:.0f} | {o.calls_per_step:.1f} | {o.share_of_op_time:.1%} |"
              for o in p.top_ops_by_self_cpu)]


SECTION = Section("profile", measure, rows, lines)
