"""The benchmark's model folder: KoGPT2's shape at the plan's size, built once into a cache folder and reused."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.fixtures import build_kogpt2_shaped, kogpt2_config
from benchmarks.plan import Plan

SEED = 0
MARKER = "korepl-bench-model.json"  # what a folder of ours was built from


def model_spec(plan: Plan) -> dict:
    return {**kogpt2_config(plan.n_layer, plan.n_embd, plan.n_head), "seed": SEED,
            "tokenizer": "demo BPE, vocabulary padded with plain filler entries"}


def default_folder(plan: Plan) -> Path:
    return Path(tempfile.gettempdir()) / "korepl-bench" / ("kogpt2-shaped" + ("-quick" if plan.name == "quick" else ""))


def ensure_model(folder: Path, plan: Plan) -> Path:
    """The plan's KoGPT2-shaped model in `folder`, built there unless a folder of ours with the same spec is there."""
    spec = model_spec(plan)
    marker = folder / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return folder
        shutil.rmtree(folder)  # an older benchmark model of ours (the marker says so): build it again
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty and is not a benchmark model folder; give another --model-dir")
    print(f"building the {plan.name} benchmark model in {folder} (once)", file=sys.stderr, flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build_kogpt2_shaped(building, n_layer=plan.n_layer, n_embd=plan.n_embd, n_head=plan.n_head, seed=SEED)
        (building / MARKER).write_text(json.dumps(spec))
        if folder.exists():
            folder.rmdir()
        building.rename(folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder
