"""The benchmark runs end to end in its quick mode, every measurement in it (a smoke test: no time is judged).

The quick run's JSON is checked section by section against the list below, written out here rather
than read from the benchmark, so that a section dropped from benchmarks/sections or a result renamed
fails this test instead of leaving it nothing to look at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench.py"

# Every section, in the order it runs; each must either leave results or say why it was skipped.
SECTIONS = ("decoding", "floor", "step", "bandwidth", "paths", "ctranslate2", "ttft", "slide_and_load", "profile",
            "compiled", "hf_static", "memory", "startup", "remote")
MAY_SKIP = {"ctranslate2": "not installed",  # an optional extra; its reason must say so
            "remote": "no llama-server"}  # scripts/llama_server.py cannot build it here
NO_ROWS = {"profile"}  # prints a table of its own


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_results(data: dict) -> None:
    """What the quick plan (decode 16 tokens, contexts 0/256/512/900, 20-token lines) must have produced."""
    results, skipped = data["results"], data["skipped"]
    assert tuple(results["section_seconds"]) == SECTIONS
    for name, reason in skipped.items():
        assert name in MAY_SKIP and MAY_SKIP[name] in reason, (name, reason)

    decode = results["decode_16"]
    assert decode["same_ids_as_generate"] is True  # korepl's greedy ids equal generate's in the benchmark too
    assert decode["korepl_new_tokens"] == decode["generate_new_tokens"] == 16
    assert all(positive(decode[k]) for k in ("korepl_tok_s", "generate_tok_s", "korepl_vs_generate"))
    assert positive(results["decode_study_loop"]["study_tok_s"])

    floor = results["floor"]
    assert floor["matrices"] == 2 * 4 + 1  # two blocks' four matrices and the lm_head
    assert all(positive(floor[k]) for k in ("in_out_x_at_W_s", "out_in_F_linear_s", "as_stored_s"))
    assert positive(results["step"]["korepl_step_s"]) and positive(results["step"]["overhead_vs_stored_floor"])
    assert positive(results["bandwidth"]["sum_read_bytes_s"]) and positive(results["bandwidth"]["upper_bound_tok_s"])

    paths = results["paths"]
    assert set(paths["by_path"]) == {"float32", "float16", "bfloat16", "int8"}
    for run in paths["by_path"].values():
        assert positive(run["step_s"]) and positive(run["floor_s"]) and positive(run["slide_s"])
        assert positive(run["decode_tok_s"]["16"])
    assert paths["fastest"] in paths["by_path"] and paths["auto_would_choose"] in paths["by_path"]
    if "ctranslate2" not in skipped:
        assert set(results["ctranslate2"]["decode_tok_s"]) == {"float32", "int8"}

    ttft = results["ttft"]
    assert set(ttft["by_context"]) == {"0", "256", "512", "900"}
    assert all(run["line_tokens"] == 20 and positive(run["korepl_s"]) for run in ttft["by_context"].values())
    assert results["window_slide"]["kept_tokens"] == 768 and positive(results["window_slide"]["slide_step_s"])
    assert results["session_load"]["context_tokens"] == 900
    assert results["profile"]["top_ops_by_self_cpu"]
    compiled = results["compiled"]
    assert set(compiled["by_path"]) == {"float32", "int8"}  # the quick plan's paths
    fp32, int8 = compiled["by_path"]["float32"], compiled["by_path"]["int8"]
    assert fp32["state"] == "compiled" and positive(fp32["compiled_step_s"]) and positive(fp32["compiled_over_eager"])
    assert positive(fp32["compiled_over_products"]) and positive(fp32["compile_in_process_s"])
    assert int8["compiled_step_s"] is None and int8["compiled_over_products"] is None and "int8" in int8["note"]
    assert all(positive(run["eager_step_s"]) and positive(run["products_s"]) and positive(run["eager_over_products"])
               for run in compiled["by_path"].values())
    compile_time = compiled["compile_time"]
    assert compile_time["path"] == "float32" and positive(compile_time["cold_s"]) and positive(compile_time["warm_s"])
    static = results["hf_static"]["by_precision"]
    assert set(static) == {"float32"}  # the CPU's; a GPU adds float16 and bfloat16
    assert static["float32"]["same_ids"] is True and static["float32"]["new_tokens"] == 16
    assert all(positive(static["float32"][k]) for k in ("static_tok_s", "korepl_vs_static", "first_call_s"))
    memory = results["memory"]
    assert memory["peak_rss"] >= memory["after_load_rss"] >= memory["imports_rss"] > 0 and memory["weights_bytes"] > 0
    assert all(positive(results["startup"][f"{k}_s"]) for k in ("python_bare", "import_cli", "import_cli_and_repl",
                                                                 "load_model"))
    if "remote" not in skipped:
        overhead, retry = results["remote"]["overhead"], results["remote"]["retry"]
        assert overhead["new_tokens"] == 16 and overhead["same_ids"] is True  # the same request both ways
        assert positive(overhead["korepl_s"]) and positive(overhead["server_s"])
        assert retry["context_tokens"] == 800 and positive(retry["warm_s"]) and positive(retry["cold_s"])
        assert retry["cold_prompt_tokens"] > retry["warm_prompt_tokens"]  # the cold retry did re-read its context

    row_sections = [row["section"] for row in data["table"]]
    assert set(row_sections) == set(SECTIONS) - NO_ROWS - set(skipped)
    assert row_sections == sorted(row_sections, key=SECTIONS.index)  # rows in the sections' order


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "bench.json"
    # The remote section's llama.cpp server is built (once, then cached) here, outside the benchmark's timeout;
    # where it cannot be built the section says so and the check below accepts that.
    subprocess.run([sys.executable, str(REPO / "scripts" / "llama_server.py"), "--json"], capture_output=True,
                   stdin=subprocess.DEVNULL)
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), "--model-dir",
                             str(folder / "model")], capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, json.loads(out.read_text(encoding="utf-8"))


def test_quick_benchmark_measures_every_section(quick_run):
    check_results(quick_run[1])


def test_quick_benchmark_prints_the_rows_it_wrote(quick_run):
    stdout, data = quick_run
    assert data["machine"]["cpu"] and data["machine"]["torch"] and data["machine"]["load_average_at_end"]
    lines = stdout.splitlines()
    table = lines.index("| measurement | value | vs baseline |")
    printed = lines[table + 2: table + 2 + len(data["table"])]
    assert printed == [f"| {r['measurement']} | {r['value']} | {r['vs_baseline']} |" for r in data["table"]]
    assert "| op | self CPU µs/step |" in stdout


def test_the_check_fails_without_a_section_or_with_a_renamed_result(quick_run):
    data = quick_run[1]

    def without(name: str, *keys: str) -> dict:
        broken = json.loads(json.dumps(data))
        del broken["results"]["section_seconds"][name]
        for key in keys:
            broken["results"].pop(key)
        broken["table"] = [row for row in broken["table"] if row["section"] != name]
        return broken

    with pytest.raises(AssertionError):
        check_results(without("ttft", "ttft"))
    renamed = json.loads(json.dumps(data))
    renamed["results"]["decode_16"]["same_ids"] = renamed["results"]["decode_16"].pop("same_ids_as_generate")
    with pytest.raises(KeyError):
        check_results(renamed)


def test_sections_run_after_what_they_need():
    from benchmarks.registry import Result, Section, check_order
    from benchmarks.sections import SECTIONS as REGISTERED

    assert tuple(s.name for s in REGISTERED) == SECTIONS
    check_order(REGISTERED)

    @dataclass(frozen=True)
    class Number(Result):
        value: int

    def first(bench) -> Number:
        return Number(1)

    def second(bench, first: Number) -> Number:
        return Number(first.value + 1)

    a, b = Section("first", first, lambda r: []), Section("second", second, lambda r: [])
    assert b.needs == ("first",)
    check_order([a, b])
    with pytest.raises(ValueError, match="needs first"):
        check_order([b, a])


def test_python_m_benchmarks_answers_help():
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and "--quick" in result.stdout, result.stderr[-2000:]


def test_sections_chosen_by_name_bring_what_they_need_in_order():
    from benchmarks.registry import chosen
    from benchmarks.sections import SECTIONS as ALL

    assert [s.name for s in chosen(ALL, ["paths"])] == ["decoding", "floor", "step", "paths"]
    assert [s.name for s in chosen(ALL, ["hf_static", "decoding"])] == ["decoding", "hf_static"]
    with pytest.raises(ValueError, match="no section 'speed'"):
        chosen(ALL, ["speed"])
    done = subprocess.run([sys.executable, str(BENCH), "--sections", "speed"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stderr.startswith("bench: no section 'speed'") and not done.stdout
