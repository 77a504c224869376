"""The machine a run happened on: CPU (korepl.machine), cores, threads, versions, date, load averages."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from dataclasses import dataclass

import torch
import transformers

from korepl.machine import cpu_flags, cpu_model

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16", "fma", "f16c")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cpu_flags: dict[str, bool]  # the flags that decide which kernels run, present or not
    cpu_count: int | None
    torch_threads: int
    torch_cpu_capability: str
    torch: str
    transformers: str
    python: str
    platform: str
    date: str
    cuda_used: bool
    gpu: str | None
    load_average_at_start: list[float]
    load_average_at_end: list[float] | None = None

    def ended(self) -> Machine:
        return dataclasses.replace(self, load_average_at_end=list(os.getloadavg()))


def machine_facts(device: torch.device) -> Machine:
    flags = cpu_flags()
    return Machine(
        cpu=cpu_model() or "unknown", cpu_flags={flag: flag in flags for flag in CPU_FLAGS}, cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch_cpu_capability=getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")(),
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        platform=platform.platform(), date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cuda_used=device.type == "cuda", gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        load_average_at_start=list(os.getloadavg()))


def facts_lines(m: Machine) -> list[str]:
    present = [f for f, has in m.cpu_flags.items() if has]
    absent = [f for f, has in m.cpu_flags.items() if not has]
    return [f"CPU: {m.cpu}; {m.cpu_count} cores; torch threads {m.torch_threads} (kernels: {m.torch_cpu_capability})",
            f"CPU flags present: {' '.join(present) or 'none'}; absent: {' '.join(absent) or 'none'}",
            f"torch {m.torch}, transformers {m.transformers}, python {m.python}, {m.platform}",
            f"date {m.date}; CUDA used: {m.cuda_used}" + (f" ({m.gpu})" if m.gpu else ""),
            f"load average at start {m.load_average_at_start}, at end {m.load_average_at_end} "
            f"(other work on these cores adds noise)"]
