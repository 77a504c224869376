"""Decoding speed: korepl's Session against HF `generate` (same ids?) and against the source study's loop."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch

from benchmarks.fixtures import hf_reference
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.timing import interleaved
from benchmarks.workload import PROMPT, REPETITION_PENALTY, greedy_settings, korepl_continue, korepl_task, stock
from korepl.session import Session


@dataclass(frozen=True)
class DecodeRun(Result):
    new_tokens: int
    prompt_tokens: int
    timing: str
    korepl_tok_s: float
    generate_tok_s: float
    korepl_vs_generate: float
    same_ids_as_generate: bool
    korepl_new_tokens: int
    generate_new_tokens: int
    korepl_times_s: list[float] = field(repr=False)
    generate_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class StudyLoop(Result):
    new_tokens: int
    timing: str
    study_tok_s: float
    korepl_tok_s: float
    korepl_vs_study: float
    study_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class Decoding(Result):
    by_length: dict[int, DecodeRun]  # one run per plan.decode_lengths
    study: StudyLoop

    def json_entries(self, name: str) -> dict:
        entries = {f"decode_{n}": dataclasses.asdict(run) for n, run in self.by_length.items()}
        return entries | {"decode_study_loop": dataclasses.asdict(self.study)}


def study_continue(model, prompt_ids: list[int], new_tokens: int, device: torch.device, seed: int = 0) -> list[int]:
    """The source study's loop: the whole text through the model for every token, then random.choice(top 5)."""
    rng = random.Random(seed)
    ids = list(prompt_ids)
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids], dtype=torch.long, device=device), use_cache=False).logits[0, -1]
        ids.append(rng.choice(torch.topk(logits, 5).indices.tolist()))
    return ids[len(prompt_ids):]


def measure(bench: Bench) -> Decoding:
    loaded, plan, device = bench.loaded, bench.plan, bench.device
    prompt_ids = Session(loaded, greedy_settings(1)).encode(PROMPT)
    baseline = stock(loaded, bench.folder)  # generate on the model as transformers loads it

    def generate(n: int) -> list[int]:
        return hf_reference(baseline, prompt_ids, n, repetition_penalty=REPETITION_PENALTY)

    korepl_continue(loaded, PROMPT, 8)  # warm-ups: the first calls load code and size buffers
    generate(8)
    runs = {}
    for n in plan.decode_lengths:
        repeats = plan.decode_repeats[n]
        timed = interleaved({"korepl": korepl_task(loaded, PROMPT, n), "generate": lambda n=n: generate(n)}, repeats,
                            device, warmup=False)
        (k_best, k_times, session), (h_best, h_times, hf_ids) = timed["korepl"], timed["generate"]
        korepl_ids = session.ids[len(prompt_ids):]
        k_rate, h_rate = n / k_best, n / h_best
        runs[n] = DecodeRun(
            new_tokens=n, prompt_tokens=len(prompt_ids),
            timing=f"best of {repeats}, korepl and generate taking turns, after a warm-up",
            korepl_tok_s=k_rate, generate_tok_s=h_rate, korepl_vs_generate=k_rate / h_rate,
            same_ids_as_generate=korepl_ids == hf_ids, korepl_new_tokens=len(korepl_ids),
            generate_new_tokens=len(hf_ids), korepl_times_s=k_times, generate_times_s=h_times)
    n = plan.study_tokens
    study_continue(baseline.model, prompt_ids, 2, device)
    timed = interleaved({"study": lambda: study_continue(baseline.model, prompt_ids, n, device),
                         "korepl": korepl_task(loaded, PROMPT, n)}, 1, device, warmup=False)
    (s_best, s_times, _), (k_best, _, _) = timed["study"], timed["korepl"]
    s_rate, k_rate = n / s_best, n / k_best
    study = StudyLoop(new_tokens=n, timing="one run each after a short warm-up (it is slow)", study_tok_s=s_rate,
                      korepl_tok_s=k_rate, korepl_vs_study=k_rate / s_rate, study_times_s=s_times)
    return Decoding(runs, study)


def rows(result: Decoding) -> list[Row]:
    out = []
    for n, run in result.by_length.items():
        same = run.same_ids_as_generate
        out += [Row(f"decode {n} tokens, korepl Session (greedy, penalty 2.0)", f"{run.korepl_tok_s:.1f} tok/s",
                    f"{run.korepl_vs_generate:.2f}× generate"),
                Row(f"decode {n} tokens, HF model.generate", f"{run.generate_tok_s:.1f} tok/s", "baseline"),
                Row(f"decode {n} tokens, korepl ids == generate ids", str(same),
                    "—" if same else f"korepl {run.korepl_new_tokens} ids, generate {run.generate_new_tokens}")]
    s = result.study
    out.append(Row(f"decode {s.new_tokens} tokens, source study's loop (no cache, random top-5)",
                   f"{s.study_tok_s:.1f} tok/s",
                   f"korepl ({s.korepl_tok_s:.1f} tok/s) = {s.korepl_vs_study:.1f}× this"))
    return out


SECTION = Section("decoding", measure, rows)
