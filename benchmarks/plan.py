"""How big a run is (`Plan`: the model's size, each measurement's work) and what every section is handed (`Bench`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from korepl.loading import LoadedModel


@dataclass(frozen=True)
class Plan:
    """How big the model is and how much work each measurement does."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    decode_lengths: tuple[int, ...]
    decode_repeats: dict[int, int]
    study_tokens: int
    step_context: int
    step_tokens: int
    repeats: int  # for the shorter measurements
    floor_repeats: int
    ttft_contexts: tuple[int, ...]
    line_tokens: int
    bandwidth_bytes: int
    startup_repeats: int
    memory_context: int
    memory_new_tokens: int
    profile_steps: int
    remote_tokens: int  # new tokens per request over a llama.cpp server
    compiled_paths: tuple[str, ...]  # the precision paths whose compiled step is timed beside the eager one
    compiled_repeats: int


FULL = Plan("full", n_layer=12, n_embd=768, n_head=12, decode_lengths=(64, 512), decode_repeats={64: 3, 512: 2},
            study_tokens=64, step_context=100, step_tokens=32, repeats=3, floor_repeats=20,
            ttft_contexts=(0, 256, 512, 900), line_tokens=20, bandwidth_bytes=1 << 30, startup_repeats=3,
            memory_context=900, memory_new_tokens=64, profile_steps=8, remote_tokens=128,
            compiled_paths=("float32", "float16", "bfloat16", "int8"), compiled_repeats=8)
QUICK = Plan("quick", n_layer=2, n_embd=128, n_head=4, decode_lengths=(16,), decode_repeats={16: 2},
             study_tokens=8, step_context=100, step_tokens=8, repeats=1, floor_repeats=5,
             ttft_contexts=(0, 256, 512, 900), line_tokens=20, bandwidth_bytes=1 << 28, startup_repeats=1,
             memory_context=900, memory_new_tokens=16, profile_steps=4, remote_tokens=16,
             compiled_paths=("float32", "int8"), compiled_repeats=2)


@dataclass(frozen=True)
class Bench:
    """What every section gets: the plan, the saved model's folder, the model loaded in float32."""

    plan: Plan
    folder: Path
    loaded: LoadedModel
    threads: int | None  # --threads, handed on to child processes

    @property
    def device(self) -> torch.device:
        return self.loaded.device
