"""The window slide (the float32 one the paths section timed) and loading a saved 900-token session."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.sections.paths import Paths
from benchmarks.timing import interleaved
from benchmarks.workload import context_text, greedy_settings, prefilled_session
from korepl import store
from korepl.session import Session


@dataclass(frozen=True)
class WindowSlide(Result):
    timing: str
    view_tokens_before: int
    kept_tokens: int
    slide_step_s: float
    plain_step_s: float
    slide_vs_plain_step: float
    plain_step_at: int


@dataclass(frozen=True)
class SessionLoad(Result):
    timing: str
    context_tokens: int
    file_bytes: int
    restore_and_prefill_s: float
    fresh_feed_and_prefill_s: float
    load_vs_fresh: float
    load_times_s: list[float] = field(repr=False)
    fresh_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class SlideAndLoad(Result):
    window_slide: WindowSlide
    session_load: SessionLoad

    def json_entries(self, name: str) -> dict:
        return {"window_slide": dataclasses.asdict(self.window_slide),
                "session_load": dataclasses.asdict(self.session_load)}


def measure(bench: Bench, paths: Paths) -> SlideAndLoad:
    loaded, plan, settings = bench.loaded, bench.plan, greedy_settings(1)
    fp32 = paths.by_path["float32"]
    slide, step = fp32.slide_s, fp32.plain_step_near_window_end_s
    window_slide = WindowSlide(timing=f"best of {plan.repeats} after a warm-up, slide and plain step taking turns",
                               view_tokens_before=loaded.window, kept_tokens=paths.kept_tokens, slide_step_s=slide,
                               plain_step_s=step, slide_vs_plain_step=slide / step, plain_step_at=paths.plain_step_at)
    context = context_text(loaded, plan.memory_context)
    with tempfile.TemporaryDirectory(prefix="korepl-bench-") as folder:
        path = Path(folder) / "session.json"
        store.save(prefilled_session(loaded, context, settings), path)

        def restore(session: Session) -> Session:
            store.restore(session, store.read_file(path), str(path))
            session.next_logits()
            return session

        def fresh(session: Session) -> Session:
            session.add_line(context)
            session.next_logits()
            return session

        def new_session() -> Session:  # made untimed: /load and a typed text both land in a running session
            return Session(loaded, settings)

        runs = interleaved({"load": (new_session, restore), "fresh": (new_session, fresh)}, plan.repeats, bench.device)
        (load_s, load_times, restored), (fresh_s, fresh_times, _) = runs["load"], runs["fresh"]
        size = path.stat().st_size
    session_load = SessionLoad(timing=f"best of {plan.repeats}, taking turns, after a warm-up",
                               context_tokens=len(restored.ids), file_bytes=size, restore_and_prefill_s=load_s,
                               fresh_feed_and_prefill_s=fresh_s, load_vs_fresh=load_s / fresh_s,
                               load_times_s=load_times, fresh_times_s=fresh_times)
    return SlideAndLoad(window_slide, session_load)


def rows(result: SlideAndLoad) -> list[Row]:
    w, s = result.window_slide, result.session_load
    return [Row(f"window slide: the step after {w.view_tokens_before} tokens (re-prefills {w.kept_tokens})",
                f"{w.slide_step_s * 1e3:.1f} ms",
                f"{w.slide_vs_plain_step:.1f}× a plain step at {w.plain_step_at} ({w.plain_step_s * 1e3:.1f} ms)"),
            Row(f"load a {s.context_tokens}-token session (read + restore + prefill)",
                f"{s.restore_and_prefill_s * 1e3:.1f} ms",
                f"{s.load_vs_fresh:.2f}× feeding the text afresh ({s.fresh_feed_and_prefill_s * 1e3:.1f} ms)")]


SECTION = Section("slide_and_load", measure, rows)
