"""Startup: wall time of fresh `python -c` runs, from bare Python to the REPL's imports to a loaded model."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.child import run_python
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section
from benchmarks.sections.memory import Memory


@dataclass(frozen=True)
class Startup(Result):
    timing: str
    python_bare_s: float
    import_cli_s: float
    import_cli_and_repl_s: float
    load_model_s: float  # launch to model ready


def measure(bench: Bench, memory: Memory) -> Startup:
    """Launch to model ready also counts the memory section's process, which was one load already."""
    programs = {
        "python_bare": "pass",
        "import_cli": "import korepl.cli",
        "import_cli_and_repl": "import korepl.cli, korepl.repl",
        "load_model": f"from korepl.loading import load_model; "
                      f"load_model({str(bench.folder)!r}, {bench.device.type!r})",
    }
    repeats = bench.plan.startup_repeats
    best = {}
    for key, code in programs.items():
        earlier = [memory.launch_to_ready_s] if key == "load_model" else []
        best[key] = min([run_python(code, bench.threads)[0] for _ in range(repeats - len(earlier))] + earlier)
    return Startup(timing=f"best of {repeats}, wall time of a fresh python -c",
                   **{f"{k}_s": v for k, v in best.items()})


def rows(s: Startup) -> list[Row]:
    bare = s.python_bare_s
    return [Row("startup: python -c pass", f"{bare * 1e3:.0f} ms", "baseline"),
            Row("startup: python -c 'import korepl.cli'", f"{s.import_cli_s * 1e3:.0f} ms",
                f"+{(s.import_cli_s - bare) * 1e3:.0f} ms over bare python"),
            Row("startup: import korepl.cli and korepl.repl (what runs before the prompt shows)",
                f"{s.import_cli_and_repl_s * 1e3:.0f} ms", f"+{(s.import_cli_and_repl_s - bare) * 1e3:.0f} ms"),
            Row("startup: launch to model ready (load_model of this run's folder)",
                f"{s.load_model_s * 1e3:.0f} ms", f"+{(s.load_model_s - bare) * 1e3:.0f} ms")]


SECTION = Section("startup", measure, rows)
