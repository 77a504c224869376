"""The one-token step compiled once, in the background, and kept only where it is faster.

Two kinds, one life cycle (`CompiledStep`: waiting → compiling → compiled, or eager with a note why):

* `GPT2Step`, for GPT-2-family models on the CPU: korepl's own step (runner.one_token) compiled by inductor.
  The eager step pays Python dispatch for each of its ~200 small ops per token; compiled, the ops between the
  products fuse into a few loops.  The cache length is a symbolic size, so one graph serves every length (a
  `torch.compile` of the eager step recompiled per length, and a fixed-size masked cache reads the whole window
  each step, which on a CPU costs more than it saves).
* `HubStep`, for other causal LMs: the model's own forward over transformers' `StaticCache` (whose length is a
  tensor, so again one graph), compiled with CUDA graphs on a GPU (`mode="reduce-overhead"`), where launching
  each small kernel is most of a step.  On the CPU it is used only under `compile = "on"`: a static cache masks
  and reads the whole window every step, which there costs more than the dynamic cache it replaces.

Compiling takes tens of seconds, so it runs on a low-priority thread while the eager step serves.  When it is
done, both steps are timed against each other on a scratch cache (taking turns, best of several) and, under
`compile = "auto"`, the compiled one is used only if it is faster; a model of under 20M parameters (the demo
model: 2.8M, a step of ~0.3 ms) steps too fast for compiling to pay and is not compiled at all.  The verdict
and its figures are what /settings shows.  Inductor keeps what it built under korepl's cache folder (its own
keys cover the graph, the precision, the device and the torch version), so a second launch mostly loads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from korepl import precision
from korepl.runner import OpPrecision, StaticRunner, crop_static, last_logits, one_token

# Under `auto`, smaller models are not compiled: the compiled call's own fixed cost is about what it saves.
# Decided by size, not by timing the step, so that a busy machine does not change the answer.
WORTH_PARAMETERS = 20_000_000
THREAD_NAME = "korepl-compile"  # korepl.repl leaves with os._exit while it runs (a compile cannot be stopped)
SCRATCH_TOKENS = 8  # what the scratch cache holds before the compiled call and the race


def for_model(model, device: torch.device, mode: str = "auto", cache_dir: Path | None = None,
              ops: OpPrecision = OpPrecision(), window: int = 1024) -> CompiledStep:
    """The compiled step that suits `model`: korepl's own GPT-2 step, or the model's forward (any other)."""
    if StaticRunner.supports(model):
        return GPT2Step(model, device, mode, cache_dir, ops)
    return HubStep(model, device, mode, cache_dir, window=window)


class CompiledStep:
    """The compiled one-token step of one loaded model, shared by every runner on it.

    `state` is one of: waiting (not started, or measuring whether to), compiling, compiled (in use),
    eager (compiled but not faster, or not worth it or not possible here: `note` says why).
    """

    def __init__(self, model, device: torch.device, mode: str = "auto", cache_dir: Path | None = None):
        self.state, self.note = "waiting", ""
        self.mode = mode  # auto: used only where faster; on: used once compiled
        self._model, self._device, self._cache_dir = model, device, cache_dir
        self._step: Callable | None = None  # set only when it is in use
        self.compile_seconds: float | None = None  # the compile (or the load from the disk cache) alone
        self.started = False

    @property
    def ready(self) -> bool:
        return self._step is not None

    def unsupported(self) -> str:
        """Why this model's step cannot be compiled here ("" when it can)."""
        if any("quantized" in type(module).__module__ for module in self._model.modules()):
            return "int8's packed weights cannot be traced by the compiler"
        return ""

    def start(self) -> None:
        """Compile on a thread; the runners keep the eager step until this says `compiled`."""
        if self.started:
            return
        self.started = True
        threading.Thread(target=self._compile_in_background, name=THREAD_NAME, daemon=True).start()

    def compile_now(self) -> None:
        """The same work on the caller's thread (tests, the benchmark)."""
        self.started = True
        self._compile_and_choose()

    def describe(self) -> str:
        return f"{self.state} ({self.note})" if self.note else self.state

    def _compile_in_background(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # the writer's step comes first
        self._compile_and_choose()

    def _compile_and_choose(self) -> None:
        why_not = self.unsupported()
        if why_not:
            self.state, self.note = "eager", why_not
            return
        parameters = sum(p.numel() for p in self._model.parameters())
        if self.mode == "auto" and parameters < WORTH_PARAMETERS:
            self.state = "eager"
            self.note = f"not worth it for {parameters / 1e6:.1f}M parameters (compile = on forces it)"
            return
        try:
            if self._cache_dir is not None:  # read by inductor at each use (and by its compile workers)
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self._cache_dir)
            started, self.state = time.perf_counter(), "compiling"
            compiled, eager_tokens, compiled_tokens = self._compile()
            seconds = self.compile_seconds = time.perf_counter() - started
            # Taking turns, the best of five after a warm-up round, as korepl.precision times its verdicts.
            race = precision.best_of({"eager": eager_tokens, "compiled": compiled_tokens}, self._device, rounds=5)
            eager_ms, compiled_ms = (race[name] / SCRATCH_TOKENS for name in ("eager", "compiled"))
        except Exception as exc:  # any failure of the compiler stack leaves the eager step serving
            self.state, self.note = "eager", f"compiling failed ({_first_line(exc)})"
            return
        figures = f"step {compiled_ms:.2f} ms compiled, {eager_ms:.2f} ms eager; compiled in {seconds:.0f} s"
        if compiled_ms < eager_ms or self.mode == "on":
            self._step, self.state, self.note = compiled, "compiled", figures
        else:
            self.state, self.note = "eager", f"the compiled step was not faster here ({figures})"

    def _compile(self) -> tuple[Callable, Callable, Callable]:
        """(the compiled step, which never compiles again; then eager and compiled runs of `SCRATCH_TOKENS` steps
        each on a scratch cache, for the race).  Compiles, or loads from the disk cache."""
        raise NotImplementedError

    def _stop_using(self, exc: Exception) -> None:
        self._step, self.state, self.note = None, "eager", f"the compiled step stopped fitting ({_first_line(exc)})"


def _strict(compiled: Callable) -> Callable:
    """Calls from the writer's thread must never compile: a guard that fails there raises (and the runner falls
    back to eager) instead of stalling the writer for seconds."""
    return torch.compiler.set_stance("fail_on_recompile")(compiled)


class GPT2Step(CompiledStep):
    """runner.one_token compiled by inductor, the token, the position and the cache length symbolic."""

    def __init__(self, model, device: torch.device, mode: str = "auto", cache_dir: Path | None = None,
                 ops: OpPrecision = OpPrecision()):
        super().__init__(model, device, mode, cache_dir)
        self._ops = ops  # as the runners' (korepl.loading.LoadedModel.ops)

    def unsupported(self) -> str:
        if self._device.type != "cpu":
            return "GPT-2's compiled step is built for the CPU only so far"
        return super().unsupported()

    def run(self, runner: StaticRunner, token: int) -> torch.Tensor:
        """The logits after `token` at the runner's next position, writing its cache there."""
        position = runner.cached_len
        # The compiler specialises sizes 0 and 1, and a view of the whole cache: those would need graphs of their
        # own (found by the guards that failed), so those few steps run eager.
        if token < 2 or position < 2 or position + 1 >= runner.keys.shape[2]:
            return one_token(runner, token, position, runner.layer_keys, runner.layer_values)
        try:
            return self._step(token, position, runner.layer_keys, runner.layer_values)
        except RuntimeError as exc:  # it would have to compile again here (a guard failed): never on this thread
            self._stop_using(exc)
            return one_token(runner, token, position, runner.layer_keys, runner.layer_values)

    def _compile(self):
        scratch = StaticRunner(self._model, self._device, ops=self._ops)  # its own cache: the writer's is untouched

        def step(token, position, layer_keys, layer_values):
            return one_token(scratch, token, position, layer_keys, layer_values)

        scratch.run(list(range(SCRATCH_TOKENS)))
        compiling = torch.compile(step, fullgraph=True, dynamic=True)
        with torch.inference_mode():  # as StaticRunner.run calls it
            compiling(SCRATCH_TOKENS, SCRATCH_TOKENS, scratch.layer_keys, scratch.layer_values)
        compiled = _strict(compiling)

        def tokens(chosen: Callable) -> Callable:
            def run() -> None:
                for i in range(SCRATCH_TOKENS):
                    chosen(100 + i, SCRATCH_TOKENS + i, scratch.layer_keys, scratch.layer_values)
            return run

        return compiled, tokens(step), tokens(compiled)


class HubStep(CompiledStep):
    """The model's own forward over a StaticCache, compiled (with CUDA graphs on a GPU); runner.HubRunner keeps
    a StaticCache for it from the start when `uses_static_cache`, else its usual DynamicCache."""

    def __init__(self, model, device: torch.device, mode: str = "auto", cache_dir: Path | None = None,
                 window: int = 1024):
        super().__init__(model, device, mode, cache_dir)
        self.window = window
        self.uses_static_cache = not self.unsupported()

    def unsupported(self) -> str:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        if self._device.type == "cpu" and self.mode != "on":
            return ("on the CPU, a model other than GPT-2 is compiled only with compile = on: its static cache reads "
                    "the whole window each step")
        if not getattr(self._model, "_can_compile_fullgraph", False):
            return "transformers does not compile this model's forward whole"
        why_not = super().unsupported()
        if why_not:
            return why_not
        try:
            layers = StaticCache(config=self._model.config, max_cache_len=SCRATCH_TOKENS).layers
        except Exception as exc:
            return f"this model takes no static cache ({_first_line(exc)})"
        if any(type(layer) is not StaticLayer for layer in layers):  # sliding windows and the like are not cropped
            return "its cache is not plain full attention in every layer (sliding windows, linear attention)"
        return ""

    def new_cache(self):
        """A StaticCache of the whole window.  Its tensors are inference tensors, whichever thread makes it: the
        graph's guards check that, and the runner runs and crops under inference mode."""
        from transformers import StaticCache

        with torch.inference_mode():
            return StaticCache(config=self._model.config, max_cache_len=self.window)

    def run(self, runner, input_ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits [vocab] after the one token `input_ids` ([1, 1]), writing the runner's cache."""
        cache = runner.cache
        if not cache.is_initialized:  # the first forward lays the cache out: eager, as every prefill
            return last_logits(self._model, input_ids, cache)
        try:
            if self._device.type == "cuda":  # a new step: the last replay's output buffers may be reused
                torch.compiler.cudagraph_mark_step_begin()
            return last_logits(self._step, input_ids, cache).clone()  # kept by the context beyond the next replay
        except Exception as exc:  # a guard failed (no compiling here), or CUDA graphs refused: eager from now on
            self._stop_using(exc)
            runner.crop(runner.cached_len)
            return last_logits(self._model, input_ids, cache)

    def _compile(self):
        scratch = self.new_cache()
        options = {"guard_filter_fn": _without_registry_guards}
        if self._device.type == "cuda":
            options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets (mode and options exclude each other)
        compiling = torch.compile(self._model.forward, fullgraph=True, options=options)
        with torch.inference_mode():  # as HubRunner.run calls it
            last_logits(self._model, torch.arange(100, 100 + SCRATCH_TOKENS, device=self._device)[None], scratch)
            token = torch.tensor([[SCRATCH_TOKENS]], device=self._device)
            for _ in range(3):  # compiles; with CUDA graphs the later calls record and replay
                crop_static(scratch, SCRATCH_TOKENS)
                last_logits(compiling, token, scratch)
        compiled = _strict(compiling)

        def tokens(chosen: Callable) -> Callable:
            def run() -> None:
                crop_static(scratch, SCRATCH_TOKENS)
                for _ in range(SCRATCH_TOKENS):
                    last_logits(chosen, token, scratch)
            return run

        return compiled, tokens(self._model.forward), tokens(compiled)


def _without_registry_guards(guards) -> list[bool]:
    """Every guard but those on transformers' registry of the model classes it has seen run (output capturing): it
    grows when another kind of model first runs in the process, which would otherwise void this graph."""
    return ["_CAN_RECORD_REGISTRY" not in guard.name for guard in guards]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
