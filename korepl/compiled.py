"""GPT-2's one-token step compiled once by inductor, in the background, kept only where it is faster.

The eager step (runner.StaticRunner) pays Python dispatch for each of its ~200 small ops per token;
compiled, the ops between the products fuse into a few loops.  The cache length is a symbolic size,
so one graph serves every length (a `torch.compile` of the eager step recompiled per length, and a
fixed-size masked cache reads the whole window each step, which on a CPU costs more than it saves).

Compiling takes tens of seconds on two cores, so it runs on a low-priority thread while the eager
step serves.  When it is done, both steps are timed against each other on scratch caches (taking
turns, best of several) and, under `compile = "auto"`, the compiled one is used only if it is
faster; a model of under 20M parameters (the demo model: 2.8M, a step of ~0.3 ms) steps too fast
for compiling to pay and is not compiled at all.  The verdict and its figures are what /settings shows.  Inductor keeps what it built under korepl's cache folder (its
own keys cover the graph, the precision, the device and the torch version), so a second launch
mostly loads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from korepl.runner import OpPrecision, StaticRunner, one_token

# Under `auto`, smaller models are not compiled: the compiled call's own fixed cost (its guards) is about what it
# saves.  Decided by size, not by timing the step, so that a busy machine does not change the answer.
WORTH_PARAMETERS = 20_000_000
THREAD_NAME = "korepl-compile"  # korepl.repl leaves with os._exit while it runs (a compile cannot be stopped)


class CompiledStep:
    """The compiled one-token step of one loaded GPT-2 model, shared by every runner on it.

    `state` is one of: waiting (not started, or measuring whether to), compiling, compiled (in use),
    eager (compiled but not faster, or not worth it or not possible here: `note` says why).
    """

    def __init__(self, model, device: torch.device, mode: str = "auto", cache_dir: Path | None = None,
                 ops: OpPrecision = OpPrecision()):
        self.state, self.note = "waiting", ""
        self.mode = mode  # auto: used only where faster; on: used once compiled
        self._model, self._device, self._cache_dir = model, device, cache_dir
        self._ops = ops  # as the runners' (korepl.loading.LoadedModel.ops)
        self._step: Callable | None = None  # set only when it is in use
        self.compile_seconds: float | None = None  # the compile (or the load from the disk cache) alone
        self.started = False

    @property
    def ready(self) -> bool:
        return self._step is not None

    def run(self, runner: StaticRunner, token: int) -> torch.Tensor:
        """The logits after `token` at the runner's next position, writing its cache there."""
        position = runner.cached_len
        # The compiler specialises sizes 0 and 1, and a view of the whole cache: those would need graphs of their
        # own (found by the guards that failed), so those few steps run eager.
        if token < 2 or position < 2 or position + 1 >= runner.keys.shape[2]:
            return one_token(runner, token, position, runner.layer_keys, runner.layer_values)
        try:
            return self._step(token, runner.cached_len, runner.layer_keys, runner.layer_values)
        except RuntimeError as exc:  # it would have to compile again here (a guard failed): never on this thread
            self._step, self.state, self.note = None, "eager", f"the compiled step stopped fitting ({_first_line(exc)})"
            return one_token(runner, token, runner.cached_len, runner.layer_keys, runner.layer_values)

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

    def _compile_in_background(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # the writer's step comes first
        self._compile_and_choose()

    def _compile_and_choose(self) -> None:
        why_not = unsupported(self._model, self._device)
        if why_not:
            self.state, self.note = "eager", why_not
            return
        parameters = sum(p.numel() for p in self._model.parameters())
        if self.mode == "auto" and parameters < WORTH_PARAMETERS:
            self.state = "eager"
            self.note = f"not worth it for {parameters / 1e6:.1f}M parameters (compile = on forces it)"
            return
        # Its own cache, of the runners' precision: the writer's is never touched.
        scratch = StaticRunner(self._model, self._device, ops=self._ops)

        def step(token, position, layer_keys, layer_values):
            return one_token(scratch, token, position, layer_keys, layer_values)

        with torch.inference_mode():
            scratch.run(list(range(8)))
        try:
            if self._cache_dir is not None:  # read by inductor at each use (and by its compile workers)
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self._cache_dir)
            started, self.state = time.perf_counter(), "compiling"
            compiling = torch.compile(step, fullgraph=True, dynamic=True)
            with torch.inference_mode():
                compiling(8, scratch.cached_len, scratch.layer_keys, scratch.layer_values)  # compiles, or loads
            # Calls from the writer's thread must never compile: a guard that fails there raises (and the
            # runner falls back to eager) instead of stalling the writer for seconds.
            compiled = torch.compiler.set_stance("fail_on_recompile")(compiling)
            seconds = self.compile_seconds = time.perf_counter() - started
            eager_ms, compiled_ms = _race(scratch, step, compiled)
        except Exception as exc:  # any failure of the compiler stack leaves the eager step serving
            self.state, self.note = "eager", f"compiling failed ({_first_line(exc)})"
            return
        figures = f"step {compiled_ms:.2f} ms compiled, {eager_ms:.2f} ms eager; compiled in {seconds:.0f} s"
        if compiled_ms < eager_ms or self.mode == "on":
            self._step, self.state, self.note = compiled, "compiled", figures
        else:
            self.state, self.note = "eager", f"the compiled step was not faster here ({figures})"

    def describe(self) -> str:
        return f"{self.state} ({self.note})" if self.note else self.state


def unsupported(model, device: torch.device) -> str:
    """Why this model's step cannot be compiled here ("" when it can)."""
    if not StaticRunner.supports(model):
        return "only GPT-2-family models have a compiled step"
    if device.type != "cpu":
        return "the compiled step is built for the CPU only so far"
    if any("quantized" in type(module).__module__ for module in model.modules()):
        return "int8's packed weights cannot be traced by the compiler"
    return ""


def _race(scratch: StaticRunner, *steps: Callable, tokens: int = 8, rounds: int = 5) -> list[float]:
    """Milliseconds per token of each step, the best of `rounds`, taking turns so that other work hits all alike."""
    best = [float("inf")] * len(steps)
    start = scratch.cached_len
    with torch.inference_mode():
        for _ in range(rounds):
            for n, step in enumerate(steps):
                began = time.perf_counter()
                for i in range(tokens):
                    step(100 + i, start + i, scratch.layer_keys, scratch.layer_values)
                best[n] = min(best[n], (time.perf_counter() - began) * 1000 / tokens)
    return best


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
