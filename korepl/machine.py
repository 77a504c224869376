"""What this machine's CPU is: its model name and feature flags, read once from /proc/cpuinfo.

Speeds differ between CPUs of one kind (AVX-512, BF16, VNNI, AMX come and go), so precision verdicts
are kept per CPU model and benchmarks print both.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    name, flags = None, frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name is None:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor"), or what the platform says where there is no cpuinfo."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (avx512f, amx_tile …); empty where /proc/cpuinfo cannot be read."""
    return _cpuinfo()[1]
