"""How the loaded model's weights are held: float32, float16, bfloat16, or int8 (dynamic quantization).

A precision is a property of the loaded model: the session, sampling and streaming code are the same
for every path.  Which path is fastest depends on the CPU (half precision is 5x faster than float32 on
one machine of this kind and slower on another), so `auto` measures the matrix-vector products of this
model's shapes once per CPU model and torch version, caches the verdict in the state folder, and never
picks a path slower than float32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import warnings
from pathlib import Path

from korepl.machine import cpu_model

# What `auto` chooses among: the paths whose accuracy holds (top-1 agreement with float32 of at least
# 99% for half precision and 95% for int8; tests/test_precision.py checks them on the demo model).
# bfloat16 keeps only 8 bits of mantissa: it agreed on 98.3% of 900 positions, so it is offered but
# never chosen for you.
AUTO_PATHS = ("float32", "float16", "int8")


def apply(model, path: str):
    """Put a float32 model on `path` (float32, bfloat16, float16 or int8), in place; returns the model."""
    import torch

    if path == "int8":
        return to_int8(model)
    return model.to(getattr(torch, path))


def to_int8(model):
    """Every linear layer, GPT-2's Conv1D ones and the output projection included, as dynamic int8.

    Layer by layer, so that only one float32 copy (Conv1D's [in, out] turned to [out, in]) lives at a time,
    rather than a converted copy of the whole model before quantizing.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    Int8Linear, qconfig = _dynamic_quantization()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):  # weight [in, out] -> nn.Linear's [out, in]
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
                linear.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
            elif type(child) is nn.Linear:
                linear = child
            else:
                continue
            linear.qconfig = qconfig
            with _quiet():  # torch.ao.quantization prints a migration notice in torch 2.13; the user sees none
                setattr(parent, name, Int8Linear.from_float(linear))
    return model


def _dynamic_quantization():
    """torch's dynamic quantization API: the int8 Linear module and its qconfig (ImportError where torch has none).

    torch 2.13 marks `torch.ao.quantization` for removal in favour of torchao; korepl's int8 is built on it.
    """
    with _quiet():
        from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
        from torch.ao.quantization import default_dynamic_qconfig
    return Int8Linear, default_dynamic_qconfig


@functools.cache
def int8_unavailable() -> str | None:
    """Why this torch cannot run korepl's int8 path, in one line; None when it can.

    Asked once per process: a tiny layer is quantized and run, so a torch that has dropped the API, or only the
    kernels under it, is found out here rather than halfway through converting a model.
    """
    import torch

    try:
        with _quiet(), torch.inference_mode():
            to_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)))(torch.zeros(1, 4))
    except Exception as exc:  # ImportError, AttributeError, a missing operator: any of them means no int8 here
        return (
            f"--quantize int8 is unavailable on this torch ({torch.__version__}): its dynamic quantization "
            f"(torch.ao.quantization) cannot be used ({_first_line(exc)}); use --quantize none, with --dtype "
            "float16 or bfloat16 for smaller weights"
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def resolve(dtype: str, quantize: str, device_type: str, hidden: int, vocab: int, cache: Path) -> tuple[str, str]:
    """(path, why) for the dtype and quantize asked for; `auto` measures once and remembers."""
    if quantize == "int8":
        if device_type != "cpu":
            raise ValueError("--quantize int8 runs on the CPU only; use --device cpu or --dtype")
        if (why_not := int8_unavailable()) is not None:
            raise ValueError(why_not)
        return "int8", "asked for"
    if dtype != "auto":
        return dtype, "asked for"
    if device_type != "cpu":
        return "float16", "auto: half precision on the GPU"
    key = f"{cpu_model()} | torch {_torch_version()} | {hidden}x{vocab}"
    known = _read_cache(cache)
    if key in known:
        return known[key]["path"], f"auto: measured before on this CPU ({known[key]['ms']})"
    timings = {p: t for p, t in measure_products(hidden, vocab).items() if p in AUTO_PATHS}
    path = fastest_not_slower(timings)
    summary = ", ".join(f"{p} {t:.1f} ms" for p, t in timings.items())
    known[key] = {"path": path, "ms": summary}
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1), encoding="utf-8")
    return path, f"auto: measured now ({summary})"


def fastest_not_slower(timings: dict[str, float]) -> str:
    """The path with the smallest time, but float32 unless another is strictly faster than it."""
    fastest = min(timings, key=timings.get)
    return fastest if timings[fastest] < timings["float32"] else "float32"


def measure_products(hidden: int, vocab: int, repeats: int = 5) -> dict[str, float]:
    """Milliseconds for one token's largest products (an MLP layer and the output projection) per path.

    int8 is left out where this torch cannot run it (see int8_unavailable).
    """
    import torch
    from torch import nn

    shapes = [(hidden, 4 * hidden), (4 * hidden, hidden), (hidden, vocab)]
    timings = {}
    with torch.inference_mode():
        for path in AUTO_PATHS:
            if path == "int8" and int8_unavailable() is not None:
                continue
            layers = [apply(nn.Sequential(nn.Linear(i, o)), path) for i, o in shapes]
            dtype = torch.float32 if path == "int8" else getattr(torch, path)
            inputs = [torch.randn(1, i, dtype=dtype) for i, _ in shapes]
            best = float("inf")
            for _ in range(repeats + 1):  # the first round warms up
                started = time.perf_counter()
                for layer, x in zip(layers, inputs):
                    layer(x)
                best = min(best, time.perf_counter() - started)
            timings[path] = best * 1000
    return timings


def _torch_version() -> str:
    import torch

    return torch.__version__


def _read_cache(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
