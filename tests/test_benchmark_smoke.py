"""The benchmark runs end to end in its quick mode (a smoke test: nothing here looks at a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_quick_benchmark_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), "--model-dir",
                             str(tmp_path / "model")], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert {"machine", "model", "results", "table"} <= set(data)
    assert data["machine"]["cpu"] and data["machine"]["torch"]
    measurements = {row["measurement"] for row in data["table"]}
    for expected in ("HF model.generate", "floor", "bandwidth", "time to first token", "window slide", "peak RSS"):
        assert any(expected in m for m in measurements), expected
    # korepl's greedy ids equal generate's in the benchmark's own run, too
    assert all(row["value"] == "True" for row in data["table"] if "ids == generate ids" in row["measurement"])
    assert "| measurement |" in result.stdout
