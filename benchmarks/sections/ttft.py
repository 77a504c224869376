"""Time to first token after a typed line, with 0 to 900 tokens already in the cache, against re-reading it all."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from benchmarks.fixtures import text_with_tokens
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.timing import timed
from benchmarks.workload import greedy_settings, prefilled_session
from korepl import sampling
from korepl.loading import LoadedModel
from korepl.session import Session

LINE_SOURCE = "오늘 배운 내용을 바탕으로 다음 주까지 짧은 글을 한 편 써서 제출하고, 궁금한 점은 게시판에 남겨 주세요."


@dataclass(frozen=True)
class FirstToken(Result):
    context_tokens: int
    line_tokens: int
    korepl_s: float
    rerun_s: float
    rerun_vs_korepl: float
    same_first_token: bool
    korepl_times_s: list[float] = field(repr=False)
    rerun_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class Ttft(Result):
    timing: str
    by_context: dict[int, FirstToken]
    growth: float  # korepl's TTFT at the last context ÷ at the first (none)

    def json_entries(self, name: str) -> dict:
        return {name: {"timing": self.timing,
                       "by_context": {str(k): dataclasses.asdict(v) for k, v in self.by_context.items()},
                       f"korepl_ttft_{list(self.by_context)[-1]}_over_ttft_0": self.growth}}


def korepl_first_token(session: Session, line: str, step: sampling.PickStep, generator) -> int:
    session.feed(f" {line}" if session.ids else line)
    return step(session.next_logits(), sampling.At(session.ids, session.view_start), generator).token_id


def rerun_first_token(loaded: LoadedModel, ids: list[int], step: sampling.PickStep, generator) -> int:
    """A tool without a kept cache: one forward over the whole context and the line (last position's logits)."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    logits = loaded.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    return step(logits, sampling.At(ids, 0), generator).token_id


def measure(bench: Bench) -> Ttft:
    loaded, plan, settings = bench.loaded, bench.plan, greedy_settings(1)
    encode = Session(loaded, settings).encode
    line = text_with_tokens(encode, plan.line_tokens, LINE_SOURCE)
    results = {}
    for context_tokens in plan.ttft_contexts:
        context = text_with_tokens(encode, context_tokens)
        korepl_times, rerun_times = [], []
        for repeat in range(plan.repeats + 1):  # the first round is a warm-up
            session = prefilled_session(loaded, context, settings)
            # korepl's own pick (its processors, then the pick) for both, built outside the timing
            step = sampling.PickStep(session.settings, session.controls, session.decode, loaded.device)
            generator = sampling.make_generator(0)
            seconds, korepl_pick = timed(lambda: korepl_first_token(session, line, step, generator), loaded.device)
            ids = list(session.ids)
            rerun_s, rerun_pick = timed(lambda: rerun_first_token(loaded, ids, step, sampling.make_generator(0)),
                                        loaded.device)
            if repeat:
                korepl_times.append(seconds)
                rerun_times.append(rerun_s)
        k, r = min(korepl_times), min(rerun_times)
        results[context_tokens] = FirstToken(context_tokens=context_tokens, line_tokens=len(ids) - context_tokens,
                                             korepl_s=k, rerun_s=r, rerun_vs_korepl=r / k,
                                             same_first_token=korepl_pick == rerun_pick, korepl_times_s=korepl_times,
                                             rerun_times_s=rerun_times)
    growth = results[plan.ttft_contexts[-1]].korepl_s / results[plan.ttft_contexts[0]].korepl_s
    return Ttft(timing=f"best of {plan.repeats} after a warm-up", by_context=results, growth=growth)


def rows(result: Ttft) -> list[Row]:
    out = [Row(f"time to first token, {run.line_tokens}-token line after {run.context_tokens} cached",
               f"{run.korepl_s * 1e3:.1f} ms", f"re-run {run.rerun_s * 1e3:.1f} ms = {run.rerun_vs_korepl:.1f}× korepl")
           for run in result.by_context.values()]
    return out + [Row(f"korepl TTFT({list(result.by_context)[-1]}) / TTFT(0)", f"{result.growth:.2f}×")]


SECTION = Section("ttft", measure, rows)
