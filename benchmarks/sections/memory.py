"""Peak resident memory of a fresh process that loads the model and writes after 900 tokens of context."""

from __future__ import annotations

import json
from dataclasses import dataclass

from benchmarks.child import REPO, peak_rss, run_python
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section


@dataclass(frozen=True)
class Memory(Result):
    # what the child process printed (benchmarks.child.memory_child)
    imports_rss: int
    after_load_rss: int
    after_prefill_rss: int
    peak_rss: int
    rss_source: str
    ru_maxrss: int
    weights_bytes: int
    context_tokens: int  # the session's ids at the end: the context and what was written
    cuda_peak_allocated: int | None
    ready_at: float
    # worked out here
    peak_minus_weights: int
    bench_process_peak_rss: int
    what: str
    launch_to_ready_s: float  # the child's launch to its model being ready
    context_before: int
    new_tokens: int


def measure(bench: Bench) -> Memory:
    plan = bench.plan
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}]; from benchmarks.child import memory_child; "
            f"memory_child({str(bench.folder)!r}, {bench.device.type!r}, {plan.memory_context}, "
            f"{plan.memory_new_tokens})")
    _, launched, out = run_python(code, bench.threads)
    child = json.loads(out.strip().splitlines()[-1])
    return Memory(**child, peak_minus_weights=child["peak_rss"] - child["weights_bytes"],
                  bench_process_peak_rss=peak_rss()[0],
                  what=f"a fresh process: load, then {plan.memory_new_tokens} tokens after {plan.memory_context} "
                       f"of context; peak from {child['rss_source']}",
                  launch_to_ready_s=child["ready_at"] - launched, context_before=plan.memory_context,
                  new_tokens=plan.memory_new_tokens)


def rows(m: Memory) -> list[Row]:
    mib = 2**20
    out = [Row(f"peak RSS: load + {m.new_tokens} tokens after {m.context_before} of context",
               f"{m.peak_rss / mib:.0f} MiB",
               f"weights {m.weights_bytes / mib:.0f} MiB; peak − weights {m.peak_minus_weights / mib:.0f} MiB"),
           Row("peak RSS after imports only (python, torch, transformers and its GPT-2 code, korepl)",
               f"{m.imports_rss / mib:.0f} MiB",
               f"peak − weights − imports {(m.peak_minus_weights - m.imports_rss) / mib:.0f} MiB"),
           Row("peak RSS after load / after the context's prefill",
               f"{m.after_load_rss / mib:.0f} / {m.after_prefill_rss / mib:.0f} MiB")]
    if m.cuda_peak_allocated is not None:
        out.append(Row("CUDA peak allocated", f"{m.cuda_peak_allocated / mib:.0f} MiB"))
    return out


SECTION = Section("memory", measure, rows)
