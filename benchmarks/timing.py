"""How the benchmark times things: one call, the best of a few repeats, and contenders taking turns."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

Task = Callable[[], object] | tuple[Callable[[], object], Callable[[object], object]]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def best_of(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True):
    """(best seconds, every timing, the last result).  One untimed warm-up run first unless told not to."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(max(1, repeats)):
        seconds, result = timed(fn, device)
        times.append(seconds)
    return min(times), times, result


def interleaved(contenders: dict[str, Task], repeats: int, device: torch.device,
                warmup: bool = True) -> dict[str, tuple[float, list[float], object]]:
    """best_of for several contenders taking turns (A B A B ...), so that load from other work hits them alike.

    A contender is a function, or (prepare, run): prepare's result is handed to run and only run is timed.
    """
    tasks = {name: c if isinstance(c, tuple) else (lambda: None, lambda _, c=c: c()) for name, c in contenders.items()}
    if warmup:
        for prepare, run in tasks.values():
            run(prepare())
    times: dict[str, list[float]] = {name: [] for name in tasks}
    results: dict[str, object] = {}
    for _ in range(max(1, repeats)):
        for name, (prepare, run) in tasks.items():
            ready = prepare()
            seconds, results[name] = timed(lambda: run(ready), device)
            times[name].append(seconds)
    return {name: (min(times[name]), times[name], results[name]) for name in tasks}
