"""What a section is, and running sections in order, each handed the results of the sections it names.

A section's `measure(bench, **needs)` returns a typed result (a dataclass) and prints nothing; its
`rows(result)` turns that result into table rows.  What a section needs is its measure's parameters
after `bench`, each named after the section whose result it takes: `def measure(bench, floor: Floor,
step: Step)`.  `check_order` refuses a list in which a section comes before something it needs.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from benchmarks.plan import Bench


class Row(NamedTuple):
    measurement: str
    value: str
    versus: str = "—"


class Result:
    """The base of every section's result dataclass."""

    def json_entries(self, name: str) -> dict[str, Any]:
        """This result's entries in the JSON's "results" (one, under the section's name, unless overridden)."""
        return {name: dataclasses.asdict(self)}


@dataclass(frozen=True)
class Skipped:
    """A section that could not run here; the reason becomes one of the notes."""

    reason: str


@dataclass(frozen=True)
class Section:
    name: str
    measure: Callable[..., Result | Skipped]
    rows: Callable[[Any], list[Row]]
    lines: Callable[[Any], list[str]] | None = None  # printed after the main table (a table of its own)

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.measure).parameters)[1:]


@dataclass(frozen=True)
class Outcome:
    """One section's run: its result, how long it took and the load average after it."""

    section: Section
    result: Result | Skipped
    seconds: float
    load_average: float


def check_order(sections: Sequence[Section]) -> None:
    seen: set[str] = set()
    for section in sections:
        if section.name in seen:
            raise ValueError(f"two sections are named {section.name!r}")
        missing = [need for need in section.needs if need not in seen]
        if missing:
            raise ValueError(f"section {section.name!r} needs {', '.join(missing)}, which must run before it")
        seen.add(section.name)


def chosen(sections: Sequence[Section], names: Sequence[str]) -> tuple[Section, ...]:
    """The sections `names` names and those they need (and so on), in the list's order."""
    by_name = {section.name: section for section in sections}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"no section {', '.join(map(repr, unknown))}; the sections: {', '.join(by_name)}")
    wanted: set[str] = set()

    def want(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for need in by_name[name].needs:
                want(need)

    for name in names:
        want(name)
    return tuple(section for section in sections if section.name in wanted)


def run(sections: Sequence[Section], bench: Bench, done: Callable[[Outcome], None] = lambda _: None) -> list[Outcome]:
    """Run `sections` in their order; `done` hears of each as it finishes.  A section whose need was skipped is too."""
    check_order(sections)
    results: dict[str, Result | Skipped] = {}
    outcomes = []
    for section in sections:
        needs = {name: results[name] for name in section.needs}
        start = time.perf_counter()
        skipped = [name for name, result in needs.items() if isinstance(result, Skipped)]
        result = Skipped(f"{section.name} needs {', '.join(skipped)}, which did not run.") if skipped \
            else section.measure(bench, **needs)
        results[section.name] = result
        outcomes.append(Outcome(section, result, time.perf_counter() - start, os.getloadavg()[0]))
        done(outcomes[-1])
    return outcomes

