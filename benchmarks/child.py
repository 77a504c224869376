"""Fresh Python processes: running one and timing it, and the memory run that happens inside one."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def peak_rss() -> tuple[int, str]:
    """Peak resident bytes of this process, and where the number came from.

    Linux's ru_maxrss survives exec, so a child started by a big parent reports the parent's peak;
    /proc/self/status's VmHWM belongs to this program's own address space, so it is preferred.
    """
    with contextlib.suppress(OSError, ValueError):
        for text_line in Path("/proc/self/status").read_text().splitlines():
            if text_line.startswith("VmHWM:"):
                return int(text_line.split()[1]) * 1024, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"  # KiB on Linux


def child_env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_python(code: str, threads: int | None) -> tuple[float, float, str]:
    """(wall seconds, launch time as time.time(), stdout) of `python -c code` in a fresh process."""
    launched, start = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(threads), capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"child python failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, launched, done.stdout


# What the "after imports" reading includes: the runtime and the model's code, korepl, this benchmark's helpers.
RUNTIME_MODULES = ("torch", "transformers", "transformers.models.gpt2.modeling_gpt2", "korepl.loading",
                   "korepl.precision", "korepl.runner", "korepl.sampling", "korepl.session", "korepl.settings",
                   "korepl.store", "benchmarks.fixtures", "benchmarks.workload")


def memory_child(folder: str, device: str, context_tokens: int, new_tokens: int) -> None:
    """Run in a fresh process: load, write `new_tokens` after a prefilled context, print the peaks as JSON."""
    for name in RUNTIME_MODULES:
        importlib.import_module(name)
    imports, source = peak_rss()

    import torch

    from benchmarks.fixtures import drain, text_with_tokens
    from benchmarks.workload import greedy_settings
    from korepl.loading import load_model
    from korepl.session import Session

    loaded = load_model(folder, device)
    ready = time.time()  # the parent subtracts its launch time: launch to model ready
    after_load, _ = peak_rss()
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    weights += sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    session = Session(loaded, greedy_settings(new_tokens))
    session.feed(text_with_tokens(session.encode, context_tokens))
    session.next_logits()
    after_prefill, _ = peak_rss()
    drain(session)
    cuda_peak = torch.cuda.max_memory_allocated() if loaded.device.type == "cuda" else None
    peak, _ = peak_rss()
    print(json.dumps({"imports_rss": imports, "after_load_rss": after_load, "after_prefill_rss": after_prefill,
                      "peak_rss": peak, "rss_source": source,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "weights_bytes": weights, "context_tokens": len(session.ids), "cuda_peak_allocated": cuda_peak,
                      "ready_at": ready}))
