"""The benchmark's sections in the order they run (and their rows print); each runs after the sections it needs."""

from __future__ import annotations

from benchmarks.registry import Section, check_order
from benchmarks.sections import (compiled, ct2, decoding, floor, hf_static, memory, paths, remote, slide_and_load,
                                 startup, step_profile, ttft)

SECTIONS: tuple[Section, ...] = (
    decoding.SECTION,        # korepl and generate side by side: the baseline the others compare with
    floor.FLOOR,
    floor.STEP,              # needs floor
    floor.BANDWIDTH,         # needs floor, step
    paths.SECTION,           # needs decoding, step
    ct2.SECTION,             # needs decoding, paths
    ttft.SECTION,
    slide_and_load.SECTION,  # needs paths (its float32 slide)
    step_profile.SECTION,
    compiled.SECTION,        # after the in-process timings: compiling leaves inductor's workers and caches behind
    hf_static.SECTION,       # compiles too
    memory.SECTION,          # in a fresh process
    startup.SECTION,         # needs memory (its process was one launch to model ready)
    remote.SECTION,          # a llama.cpp server of its own, running the demo model
)
check_order(SECTIONS)
