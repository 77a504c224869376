"""The run's output: the markdown table and notes on stdout, progress on stderr, everything as one JSON document."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.fixtures import KOGPT2_VOCAB
from benchmarks.machine import Machine, facts_lines
from benchmarks.plan import Plan
from benchmarks.registry import Outcome, Row, Skipped

NOTES = (
    "Timings are the best of the repeats given in each result's 'timing' (after a warm-up); none is asserted.",
    "korepl's decode time includes its prompt prefill and one extra forward step at the end (it runs the last "
    "token so that undo needs no model run); generate's includes its prefill.",
    "The re-run baseline for time to first token computes only the last position's logits (logits_to_keep=1).",
    f"The benchmark tokenizer is the demo model's BPE with its vocabulary padded to KoGPT2's {KOGPT2_VOCAB:,} "
    "by plain entries.",
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def section_rows(outcome: Outcome) -> list[Row]:
    return [] if isinstance(outcome.result, Skipped) else outcome.section.rows(outcome.result)


def announce(outcome: Outcome) -> None:
    """On stderr as each section ends: its rows, then how long it took."""
    for row in section_rows(outcome):
        progress(f"  {row.measurement}: {row.value}" + (f"   ({row.versus})" if row.versus != "—" else ""))
    if isinstance(outcome.result, Skipped):
        progress(f"  skipped: {outcome.result.reason}")
    progress(f"[{outcome.section.name}: {outcome.seconds:.1f} s, load average {outcome.load_average:.2f}]")


def notes(outcomes: Sequence[Outcome]) -> list[str]:
    return [o.result.reason for o in outcomes if isinstance(o.result, Skipped)] + list(NOTES)


def print_report(title: str, machine: Machine, outcomes: Sequence[Outcome]) -> None:
    print(f"\n{title}")
    print("\n".join(facts_lines(machine)))
    print()
    print("| measurement | value | vs baseline |")
    print("|---|---|---|")
    for outcome in outcomes:
        for row in section_rows(outcome):
            print(f"| {row.measurement} | {row.value} | {row.versus} |")
    for outcome in outcomes:
        if outcome.section.lines and not isinstance(outcome.result, Skipped):
            print("\n".join(outcome.section.lines(outcome.result)))
    print("\nNotes: " + " ".join(notes(outcomes)))


def document(plan: Plan, model: dict, machine: Machine, outcomes: Sequence[Outcome], elapsed: float) -> dict:
    """The JSON: each section's entries under "results" (its name, unless it says otherwise), every row tagged
    with the section that made it, and the sections that were skipped with why."""
    results: dict = {"section_seconds": {o.section.name: o.seconds for o in outcomes},
                     "load_average_after_section": {o.section.name: o.load_average for o in outcomes}}
    for o in outcomes:
        if not isinstance(o.result, Skipped):
            results.update(o.result.json_entries(o.section.name))
    table = [{"measurement": r.measurement, "value": r.value, "vs_baseline": r.versus, "section": o.section.name}
             for o in outcomes for r in section_rows(o)]
    return {"benchmark": "korepl", "plan": dataclasses.asdict(plan), "machine": dataclasses.asdict(machine),
            "model": model, "elapsed_s": elapsed, "results": results, "table": table,
            "skipped": {o.section.name: o.result.reason for o in outcomes if isinstance(o.result, Skipped)},
            "notes": notes(outcomes)}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1, default=str))
