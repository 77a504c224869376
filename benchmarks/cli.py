"""Side-by-side speed benchmark for korepl: a table on stdout, JSON to a file.  Nothing here asserts a time.

    python benchmarks/bench.py                 # KoGPT2's shape (12 layers, 768 wide), several minutes
    python benchmarks/bench.py --quick         # a tiny model and few tokens: a smoke test for CI
    python benchmarks/bench.py --out FILE.json --device cpu|cuda --threads N --model-dir DIR
    python -m benchmarks ...                   # the same, from the repository's root

Speed is reported as ratios against baselines run in the same process (Hugging Face `generate`, the
source study's uncached loop, a re-run of the whole context, the physical floor of the matrix–vector
products and the machine's measured memory bandwidth), because absolute numbers depend on the CPU.
Every timing is the best of a few repeats after a warm-up run.  The model has KoGPT2's exact shape
with random weights (speed does not depend on the weights' values); it is built once into a cache folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers

from benchmarks import model, registry, report
from benchmarks.fixtures import KOGPT2_VOCAB
from benchmarks.machine import machine_facts
from benchmarks.plan import FULL, QUICK, Bench
from benchmarks.sections import SECTIONS
from korepl.loading import ModelUnavailable, load_model

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens (a smoke test, < 1 min)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON output file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the benchmark model is built once and reused (default under the temp folder)")
    parser.add_argument("--sections", default=None, metavar="NAME,...",
                        help="only these sections, and those they need (default: all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    try:
        sections = registry.chosen(SECTIONS, args.sections.split(",")) if args.sections else SECTIONS
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # the baselines' from_pretrained
    started = time.perf_counter()
    folder = model.ensure_model((args.model_dir or model.default_folder(plan)).expanduser().resolve(), plan)
    try:
        loaded = load_model(str(folder), args.device)
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    machine = machine_facts(loaded.device)
    report.progress(f"korepl benchmark ({plan.name}): {plan.n_layer} layers, {plan.n_embd} wide, vocabulary "
                    f"{KOGPT2_VOCAB}, window {loaded.window}; model folder {folder}")

    outcomes = registry.run(sections, Bench(plan, folder, loaded, args.threads), report.announce)

    machine = machine.ended()
    elapsed = time.perf_counter() - started
    report.print_report(f"korepl benchmark ({plan.name}), model {plan.n_layer} layers × {plan.n_embd} wide, fp32, "
                        f"{loaded.device.type}; {elapsed:.0f} s in all", machine, outcomes)
    about_model = {"folder": str(folder), **model.model_spec(plan), "dtype": "float32", "window": loaded.window}
    report.write_json(args.out, report.document(plan, about_model, machine, outcomes, elapsed))
    print(f"\nJSON written to {args.out}")
    return 0
