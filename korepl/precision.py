"""How the loaded model's weights are held: float32, float16, bfloat16, or int8 (dynamic quantization).

A precision is a property of the loaded model: the session, sampling and streaming code are the same
for every path.  Which path is fastest depends on the CPU (half precision is 5x faster than float32 on
one machine of this kind and slower on another), so `auto` measures the whole one-token step of a model of
this model's shape on each path once per CPU model and shape (again when the verdict is old, from another torch,
or implausible), caches the verdict and its figures in the state folder, and never picks a path slower than
float32.  The products alone do not decide it: on one AMD EPYC float16 had the fastest products and the slowest
step.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def matrix_shapes(model) -> dict[tuple[int, int], str]:
    """{(in, out): its own layout} of every matrix one token multiplies: GPT-2's Conv1D layers ("in_out") and the
    output projection ("out_in", an nn.Linear)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    shapes = {tuple(m.weight.shape): "in_out" for m in model.modules() if isinstance(m, Conv1D)}
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:
        shapes[(head.in_features, head.out_features)] = "out_in"
    return shapes


def arrange(model, layouts: dict[tuple[int, int], str]):
    """Each matrix in the layout `layouts` gives its (in, out) shape: "out_in" (nn.Linear, F.linear) or "in_out"
    (Conv1D, addmm); a shape it leaves out goes out_in.  A Conv1D turned nn.Linear keeps the same numbers in one
    copy; an output projection turned Conv1D gets a copy of its own (it shares the input embedding's weights, which
    keep their [vocab, width] rows for the lookups).  Returns the model."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    _replace_conv1d(model, lambda linear: linear,
                    keep=lambda conv: layouts.get(tuple(conv.weight.shape)) == "in_out")
    head = model.get_output_embeddings()
    if type(head) is nn.Linear and layouts.get((head.in_features, head.out_features)) == "in_out":
        import torch

        weight = head.weight.detach()
        with torch.device("meta"):  # no initialisation of weights about to be replaced
            turned = Conv1D(head.out_features, head.in_features)
        del turned.weight, turned.bias
        # Buffers, not parameters: a copy of weights the model already counts (the embedding's).
        turned.register_buffer("weight", weight.t().contiguous())
        turned.register_buffer("bias", head.bias.detach() if head.bias is not None else weight.new_zeros(weight.shape[0]))
        model.set_output_embeddings(turned)
    return model


def to_int8(model):
    """Every linear layer, GPT-2's Conv1D ones and the output projection included, as dynamic int8.

    Layer by layer, so that only one float32 copy (Conv1D's [in, out] turned to [out, in]) lives at a time,
    rather than a converted copy of the whole model before quantizing.
    """
    from torch import nn

    Int8Linear, qconfig = _dynamic_quantization()

    def quantize(linear):
        linear.qconfig = qconfig
        with _quiet():  # torch.ao.quantization prints a migration notice in torch 2.13; the user sees none
            return Int8Linear.from_float(linear)

    _replace_conv1d(model, quantize, also=nn.Linear)
    return model


def _replace_conv1d(model, make, also: type | None = None, keep=lambda conv: False) -> None:
    """Each Conv1D child but those `keep` names (and each child of exactly type `also`) replaced by make(an
    nn.Linear over its weights)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D) and not keep(child):  # weight [in, out] -> nn.Linear's [out, in]
                weight = child.weight.detach()
                linear = nn.Linear(weight.shape[0], weight.shape[1], device="meta")
                linear.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
                linear.bias = nn.Parameter(child.bias.detach(), requires_grad=False)
            elif also is not None and type(child) is also:
                linear = child
            else:
                continue
            setattr(parent, name, make(linear))


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


def resolve(dtype: str, quantize: str, device_type: str, hidden: int, vocab: int, cache: Path | None, *,
            layers: int = 12, heads: int | None = None, positions: int = 1024) -> tuple[str, str]:
    """(path, why) for the dtype and quantize asked for; `auto` measures the whole step once and remembers.

    `hidden`, `vocab`, `layers`, `heads` and `positions` are the model's shape: `auto` times a one-token step of a
    GPT-2 of that shape on each path (see measure_step) and keeps the verdict per CPU model and shape, with the
    figures, the torch version and the time it was measured; a verdict that is old, from another torch, or that does
    not hold together is measured again.
    """
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
    import torch

    heads = heads if heads and hidden % heads == 0 else 1  # a proxy's heads must divide its width
    shape = StepShape(hidden, layers, heads, vocab, positions)
    key = f"auto | {device_name(torch.device('cpu'))} | {shape.width}x{shape.layers}x{shape.vocab}"
    known = _read_cache(cache) if cache is not None else {}
    entry = known.get(key)
    stale = _why_stale(entry) if entry is not None else "none yet"
    if stale is None:
        when = _when(entry["measured"])
        return entry["path"], f"auto: measured before on this CPU, {when} (whole step: {entry['ms']})"
    previous = entry.get("step_ms") if stale not in ("none yet", "it does not hold together") else None
    path, timings, note = auto_verdict(shape, previous, cache)
    summary = step_summary(timings)
    known = _read_cache(cache) if cache is not None else {}  # measuring remembered layout and attention verdicts
    # The products-era verdicts (keyed "<cpu> | torch <v> | <width>x<vocab>") decided nothing the step would agree
    # with: they go when a whole-step verdict is written.
    known = {k: v for k, v in known.items() if k.split(" | ")[0] in ("auto", "layout", "attention", "prefill")}
    known[key] = {"path": path, "ms": summary, "step_ms": {p: round(t, 3) for p, t in timings.items()},
                  "measured": time.time(), "torch": _torch_version()}
    _write_cache(cache, known)
    again = "" if stale == "none yet" else f", again: {stale}"
    return path, f"auto: measured now{again}{note} (whole step: {summary})"


# A verdict is kept this long; after that (a new BIOS, another kernel, a busy neighbour gone) it is measured again.
VERDICT_DAYS = 30
# Figures that moved by more than this factor against the last ones stored are measured a second time.
MOVED_FACTOR = 2.0
# The context a measured step sees: the length of a short exchange.
STEP_CONTEXT = 100


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What a one-token step's cost depends on: the model's width, depth, heads, vocabulary and window."""

    width: int
    layers: int
    heads: int
    vocab: int
    positions: int


def step_summary(timings: dict[str, float]) -> str:
    return ", ".join(f"{p} {t:.1f} ms" for p, t in timings.items())


def _why_stale(entry) -> str | None:
    """Why a stored verdict must be measured again, in a few words; None when it stands."""
    try:
        age_days = (time.time() - float(entry["measured"])) / 86400
        timings = {str(p): float(t) for p, t in entry["step_ms"].items()}
        path, torch_version = entry["path"], entry["torch"]
    except (KeyError, TypeError, ValueError, AttributeError):
        return "it does not hold together"
    if torch_version != _torch_version():
        return f"it was measured on torch {torch_version}"
    if not 0 <= age_days <= VERDICT_DAYS:
        return f"it was {age_days:.0f} days old"
    usable = [p for p in AUTO_PATHS if p != "int8" or int8_unavailable() is None]
    if (path not in usable or "float32" not in timings or not all(0 < t < float("inf") for t in timings.values())
            or fastest_not_slower({p: t for p, t in timings.items() if p in usable}) != path):
        return "it does not hold together"  # say, float16 chosen over a faster float32, or int8 this torch lacks
    return None


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(stamp))


def auto_verdict(shape: StepShape, previous: dict[str, float] | None = None,
                 cache: Path | None = None) -> tuple[str, dict[str, float], str]:
    """(path, whole-step milliseconds per path, a note on how they were had) for `auto` on this CPU.

    Measured once; measured a second time, and the best of both kept, when the figures look implausible: the two
    halves of the rounds choose differently, a path's layers came out costing nothing (noise), or the figures moved by
    more than MOVED_FACTOR against `previous` (the last ones stored).  Never a path slower than float32.
    """
    timings, halves = measure_step(shape, cache)
    doubt = _doubt(timings, halves, previous)
    if doubt is None:
        return fastest_not_slower(timings), timings, ""
    again, _ = measure_step(shape, cache)
    # The best of both; a figure of nothing or less is noise, not a time (a path with no other is never chosen).
    timings = {p: min((t for t in (t, again[p]) if t > 0), default=float("inf")) for p, t in timings.items()}
    path = fastest_not_slower(timings) if timings["float32"] < float("inf") else "float32"
    return path, timings, f", twice ({doubt})"


def _doubt(timings: dict[str, float], halves: tuple[dict[str, float], ...], previous: dict[str, float] | None):
    if any(t <= 0 for t in timings.values()):
        return "a path's layers came out costing nothing"
    if len({fastest_not_slower(half) for half in halves}) > 1:
        return "the rounds disagreed"
    for path, ms in (previous or {}).items():
        if path in timings and ms > 0 and not 1 / MOVED_FACTOR <= timings[path] / ms <= MOVED_FACTOR:
            return f"{path} moved from {ms:.1f} ms"
    return None


def measure_step(shape: StepShape, cache: Path | None = None,
                 rounds: int = 8) -> tuple[dict[str, float], tuple[dict[str, float], ...]]:
    """Milliseconds for one eager token step of a model of `shape` at STEP_CONTEXT tokens of context, per path (int8
    left out where this torch cannot run it), the best of `rounds`; and the same from each half of the rounds.

    The model is a GPT-2 of the real width, heads, vocabulary and window but ONE layer, random weights (speed does not
    depend on their values), put on each path as load_model puts it (apply, then the faster weight layout and
    attention precision), stepped by korepl's own StaticRunner step (runner.one_token) in three parts:
      layer: the step without the output projection (embeddings, the layer, the final norm);
      head:  the step without the layer (embeddings, the final norm, the output projection);
      bare:  neither (embeddings and the final norm: microseconds).
    The real model's step is then head + layers x (layer - bare): each layer costs what the one measured does.
    One layer's weights may fit in the CPU's last cache where a whole model's stream from memory every step, as the
    layers before each one evict it: the cache is flushed before each timed part (a buffer twice its size read
    through).  The paths take turns within each round (A B C A B C ...), so a neighbour's burst of work slows them
    alike, and each part's minimum over the rounds is kept.
    """
    import torch

    runners = _step_runners(shape, cache)
    flush = torch.zeros(_flush_bytes() // 4)
    times = {(path, part): [] for path in runners for part in ("layer", "head", "bare")}
    with torch.inference_mode():
        for parts in runners.values():  # warm up: first calls pack weights and size buffers
            for runner in parts.values():
                _one_step(runner)
        for _ in range(rounds):
            for path, parts in runners.items():
                for part, runner in parts.items():
                    times[(path, part)].append(_timed_step(runner, flush if part != "bare" else None))

    def estimate(first: int, last: int) -> dict[str, float]:
        best = {key: min(values[first:last]) for key, values in times.items()}
        return {path: (best[(path, "head")] + shape.layers * (best[(path, "layer")] - best[(path, "bare")])) * 1000
                for path in runners}

    half = rounds // 2
    return estimate(0, rounds), (estimate(0, half), estimate(half, rounds))


def _one_step(runner):
    from korepl.runner import one_token

    return one_token(runner, 5, STEP_CONTEXT, runner.layer_keys, runner.layer_values)


def _timed_step(runner, flush) -> float:
    if flush is not None:
        flush.sum()  # read, not written: dirty lines would cost the step their write-back
    started = time.perf_counter()
    _one_step(runner)
    return time.perf_counter() - started


def _step_runners(shape: StepShape, cache: Path | None) -> dict:
    """Per path, the parts measure_step times: a StaticRunner over a one-layer model of `shape` on that path, with its
    output projection or its layer left out."""
    import copy

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from korepl.runner import OpPrecision, StaticRunner

    config = GPT2Config(vocab_size=shape.vocab, n_positions=max(shape.positions, STEP_CONTEXT + 1),
                        n_embd=shape.width, n_layer=1, n_head=shape.heads, activation_function="gelu_new",
                        bos_token_id=0, eos_token_id=0)  # GPT-2's own ids (50256) would be past a smaller vocabulary
    with torch.device("meta"):  # no initialisation pass: random values are written once below
        base = GPT2LMHeadModel(config)
    base.to_empty(device="cpu")
    base.tie_weights()
    base.eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.uniform_(-0.05, 0.05)
    cpu = torch.device("cpu")
    paths = [p for p in AUTO_PATHS if p != "int8" or int8_unavailable() is None]
    runners = {}
    for path in sorted(paths, key=lambda p: p == "float32"):  # float32 last: it is the base itself, turned in place
        model = base if path == "float32" else copy.deepcopy(base)
        if path != "float32":
            apply(model, path)
        # As load_model puts it: the faster layouts and attention precision, the verdicts it will then find remembered.
        if path != "int8":
            arrange(model, fast_layouts(path, cpu, matrix_shapes(model), cache)[0])
        attention = fast_attention(path, cpu, shape.heads, shape.width // shape.heads, cache)[0]
        ops = OpPrecision(attention=getattr(torch, attention))  # as LoadedModel.ops
        step = StaticRunner(model, cpu, ops=ops)
        for stored in (step.keys, step.values):  # a context of STEP_CONTEXT positions, of ordinary values
            stored[:, :, :STEP_CONTEXT + 1].normal_()
        layer, head, bare = copy.copy(step), copy.copy(step), copy.copy(step)
        layer.lm_head = bare.lm_head = _no_projection
        head.layers = bare.layers = []
        runners[path] = {"layer": layer, "head": head, "bare": bare}
    return {path: runners[path] for path in paths}


def _no_projection(hidden):
    return hidden


def _flush_bytes() -> int:
    """Twice the CPU's last-level cache (64 MiB where it cannot be read), at most 512 MiB."""
    size = 32 << 20
    with contextlib.suppress(OSError, ValueError):
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return min(2 * size, 512 << 20)


def fast_layouts(path: str, device, shapes: dict[tuple[int, int], str],
                 cache: Path | None) -> tuple[dict[tuple[int, int], str], str]:
    """({(in, out): "in_out" or "out_in"}, why): for each matrix shape, the weight layout whose one-token product is
    faster for `path` on `device` (see arrange).

    GPT-2 keeps its blocks' weights [in, out] and runs addmm; F.linear runs [out, in].  The same numbers, but not the
    same kernels, and which is faster depends on the precision, the shape and the CPU: on one AMD EPYC a float16
    addmm took 24x as long as F.linear, while in float32 the [in, out] product was 1.6x as fast for the output
    projection (768 to 51,200) and 1.3x as slow for 3,072 to 768.  `shapes` gives each shape's own layout (see
    matrix_shapes); another is taken only where it is 5% faster.  int8 is always [out, in].
    """
    if path == "int8":
        return {shape: "out_in" for shape in shapes}, "int8 runs nn.Linear"
    layouts, whys = {}, []
    for (fan_in, fan_out), own in sorted(shapes.items()):
        other = "in_out" if own == "out_in" else "out_in"
        layout, why = _remembered(
            f"layout | {device_name(device)} | torch {_torch_version()} | {path} | {fan_in}x{fan_out}", cache,
            lambda: measure_layouts(path, device, fan_in, fan_out),
            lambda ms: other if ms[other] < 0.95 * ms[own] else own, ("in_out", "out_in"))
        layouts[(fan_in, fan_out)] = layout
        whys.append(f"{fan_in}x{fan_out} {layout}: {why}")
    return layouts, "; ".join(whys)


def layout_summary(layouts: dict[tuple[int, int], str]) -> str:
    """"out_in", "in_out", or each shape's where they differ (what /settings and the benchmark show)."""
    kinds = set(layouts.values())
    if len(kinds) == 1:
        return kinds.pop()
    return ", ".join(f"{i}x{o} {layout}" for (i, o), layout in sorted(layouts.items()))


def measure_layouts(path: str, device, fan_in: int, fan_out: int, rounds: int = 15) -> dict[str, float]:
    """Milliseconds for one token through an [in, out] product in each layout, its weights read from memory.

    A single matrix can sit in the CPU's last-level cache between calls, where a model's stream from memory each
    step (the layers before evict it): the cache is flushed before each timed call, as measure_step does.
    """
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, path)
    weight = (torch.randn(fan_in, fan_out, device=device) / fan_in ** 0.5).to(dtype)
    bias, x = torch.zeros(fan_out, dtype=dtype, device=device), torch.randn(1, fan_in, device=device).to(dtype)
    transposed = weight.t().contiguous()
    flush = torch.zeros(_flush_bytes() // 4) if device.type == "cpu" else None
    return best_of({"in_out": lambda: torch.addmm(bias, x, weight), "out_in": lambda: F.linear(x, transposed, bias)},
                    device, rounds, exclude=flush.sum if flush is not None else None)


def fast_attention(path: str, device, heads: int, head_dim: int, cache: Path | None) -> tuple[str, str]:
    """(dtype name, why): the precision one-query attention runs in for `path`: its own, or float32 if faster.

    Half-precision batched products have no fast kernel on some CPUs: on one AMD EPYC, attention over 900 cached
    positions took 521 us a layer in float16 against 71 us in float32.  So a half path may keep its cache and its
    attention in float32 (twice the cache's memory, and two casts a layer).
    """
    if path in ("float32", "int8"):  # int8 keeps float32 activations
        return "float32", "the weights' own"
    return _remembered(f"attention | {device_name(device)} | torch {_torch_version()} | {path} | {heads}x{head_dim}",
                       cache, lambda: measure_attention(path, device, heads, head_dim),
                       lambda ms: "float32" if ms["float32"] < ms[path] else path, ("float32", path))


def measure_attention(path: str, device, heads: int, head_dim: int, positions: int = 512,
                      rounds: int = 15) -> dict[str, float]:
    """Milliseconds for one query's attention over `positions` cached ones, in `path`'s precision and in float32
    (with the casts in and out that float32 costs a half path)."""
    import torch

    half = getattr(torch, path)
    query = torch.randn(heads, 1, head_dim, dtype=half, device=device)
    caches = {dtype: (torch.randn(heads, positions, head_dim, device=device).to(dtype),
                      torch.randn(heads, positions, head_dim, device=device).to(dtype))
              for dtype in (half, torch.float32)}

    def attend(dtype):
        keys, values = caches[dtype]
        scores = torch.bmm(query.to(dtype), keys.transpose(1, 2)) * head_dim ** -0.5
        return torch.bmm(torch.softmax(scores, dim=-1), values).to(half)

    return best_of({path: lambda: attend(half), "float32": lambda: attend(torch.float32)}, device, rounds)


def fast_prefill(path: str, device, hidden: int, layout: str, cache: Path | None) -> tuple[str, str]:
    """("float32" or "", why): whether a prefill's products (many tokens at once) run faster in float32, the weights
    cast for each product, than in `path`'s own precision.  On one AMD EPYC a float16 product over 768 tokens took
    80 ms as F.linear (2.4 s as addmm) against 21 ms cast to float32."""
    if path in ("float32", "int8"):
        return "", "the weights' own"
    return _remembered(f"prefill | {device_name(device)} | torch {_torch_version()} | {path} | {layout} | {hidden}",
                       cache, lambda: measure_prefill(path, device, hidden, layout),
                       lambda ms: "float32" if ms["float32"] < ms[path] else "", ("float32", ""))


def measure_prefill(path: str, device, hidden: int, layout: str, rows: int = 128, rounds: int = 3) -> dict[str, float]:
    """Milliseconds for `rows` tokens through an MLP-sized product in `path` (as `layout` runs it) and cast to
    float32."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, path)
    weight = (torch.randn(hidden, 4 * hidden, device=device) / hidden ** 0.5).to(dtype)  # [in, out]
    stored = weight.t().contiguous() if layout == "out_in" else weight
    bias, x = torch.zeros(4 * hidden, dtype=dtype, device=device), torch.randn(rows, hidden, device=device).to(dtype)
    if layout == "out_in":
        own = lambda: F.linear(x, stored, bias)  # noqa: E731
        cast = lambda: F.linear(x.float(), stored.float(), bias.float()).to(dtype)  # noqa: E731
    else:
        own = lambda: torch.addmm(bias, x, stored)  # noqa: E731
        cast = lambda: torch.addmm(bias.float(), x.float(), stored.float()).to(dtype)  # noqa: E731
    return best_of({path: own, "float32": cast}, device, rounds)


def _remembered(key: str, cache: Path | None, measure, choose, allowed: tuple[str, ...]) -> tuple[str, str]:
    """(choice, why) for a kernel verdict: the one remembered under `key` in `cache`, or choose(measure()) now,
    remembered beside the precision verdicts (once per device, torch version, precision and shape).  An entry
    that is not one korepl wrote (an older form, a hand edit, a choice not in `allowed`) is measured afresh."""
    known = _read_cache(cache) if cache is not None else {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("choice") in allowed and isinstance(entry.get("ms"), str):
        return entry["choice"], f"measured before ({entry['ms']})"
    timings = measure()
    choice = choose(timings)
    summary = ", ".join(f"{name} {ms:.3f} ms" for name, ms in timings.items())
    known[key] = {"choice": choice, "ms": summary}
    _write_cache(cache, known)
    return choice, f"measured now ({summary})"


def best_of(runs: dict, device, rounds: int, exclude=None) -> dict[str, float]:
    """Milliseconds of each run, the best of `rounds` after a warm-up round (first calls may pack weights), the
    runs taking turns so that other work on the machine slows them alike.  `exclude`: an untimed call before each
    timed one (flushing the cache)."""
    import torch

    best = dict.fromkeys(runs, float("inf"))
    with torch.inference_mode():
        for _ in range(rounds + 1):
            for name, run in runs.items():
                if exclude is not None:
                    exclude()
                started = time.perf_counter()
                run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best[name] = min(best[name], (time.perf_counter() - started) * 1000)
    return best


def device_name(device) -> str:
    """The CPU's model or the GPU's name: what speed verdicts are kept by."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return cpu_model()


def fastest_not_slower(timings: dict[str, float]) -> str:
    """The path with the smallest time, but float32 unless another is strictly faster than it."""
    fastest = min(timings, key=timings.get)
    return fastest if timings[fastest] < timings["float32"] else "float32"


def _torch_version() -> str:
    import torch

    return torch.__version__


def _read_cache(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: Path | None, known: dict) -> None:
    """Remember verdicts; a folder that cannot be written only means measuring again next time."""
    if cache is None:
        return
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1), encoding="utf-8")
