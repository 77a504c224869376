"""CTranslate2 (the optional `bench` extra) on the same saved model, prompt and settings, float32 and int8."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section, Skipped
from benchmarks.sections.decoding import Decoding
from benchmarks.sections.paths import Paths
from benchmarks.timing import best_of
from benchmarks.workload import PROMPT, REPETITION_PENALTY, greedy_settings
from korepl.session import Session

NOTE = "its repetition penalty counts differently, so its ids are not generate's; the work per token is the same"


@dataclass(frozen=True)
class CTranslate2(Result):
    version: str
    decode_tok_s: dict[str, dict[int, float]]  # by compute type, then by new tokens
    korepl_fastest_path: str
    korepl_fastest_vs_best_ct2: float
    note: str
    vs_generate_fp32: dict[str, dict[int, float]]
    compared_at: int  # the new tokens at which korepl's fastest path and the faster mode are compared
    faster_mode: str


def measure(bench: Bench, decoding: Decoding, paths: Paths) -> CTranslate2 | Skipped:
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        return Skipped("CTranslate2 is not installed, so its rows are missing: pip install -e '.[bench]'.")
    folder, loaded, plan = bench.folder, bench.loaded, bench.plan
    converted = folder.parent / f"{folder.name}-ctranslate2"
    if not (converted / "model.bin").is_file():
        with contextlib.redirect_stdout(sys.stderr):
            TransformersConverter(str(folder)).convert(str(converted), quantization="float32", force=True)
    tokens = loaded.tokenizer.convert_ids_to_tokens(Session(loaded, greedy_settings(1)).encode(PROMPT))
    generate = {n: run.generate_tok_s for n, run in decoding.by_length.items()}
    results = {}
    for compute_type in ("float32", "int8"):
        generator = ctranslate2.Generator(str(converted), device=bench.device.type, compute_type=compute_type,
                                          intra_threads=torch.get_num_threads())
        rates = {}
        for n in plan.decode_lengths:
            def run(n=n):
                return generator.generate_batch([tokens], max_length=n, min_length=n, sampling_topk=1,
                                                 repetition_penalty=REPETITION_PENALTY, include_prompt_in_result=False)
            best, _, out = best_of(run, plan.decode_repeats[n], bench.device)
            rates[n] = len(out[0].sequences_ids[0]) / best
        results[compute_type] = rates
        del generator
    n = plan.decode_lengths[0]
    faster = max(results, key=lambda c: results[c][n])
    fastest = paths.by_path[paths.fastest]
    return CTranslate2(version=ctranslate2.__version__, decode_tok_s=results, korepl_fastest_path=paths.fastest,
                       korepl_fastest_vs_best_ct2=fastest.decode_tok_s[n] / results[faster][n], note=NOTE,
                       vs_generate_fp32={c: {k: r / generate[k] for k, r in rates.items()}
                                         for c, rates in results.items()},
                       compared_at=n, faster_mode=faster)


def rows(result: CTranslate2) -> list[Row]:
    out = [Row(f"CTranslate2 {result.version} {compute_type}: decode",
               ", ".join(f"{rates[n]:.1f} tok/s at {n} ({result.vs_generate_fp32[compute_type][n]:.2f}× generate fp32)"
                         for n in rates))
           for compute_type, rates in result.decode_tok_s.items()]
    out.append(Row(f"korepl's fastest path ({result.korepl_fastest_path}) / CTranslate2's faster mode "
                   f"({result.faster_mode}), {result.compared_at} tokens", f"{result.korepl_fastest_vs_best_ct2:.2f}×"))
    return out


SECTION = Section("ctranslate2", measure, rows)
