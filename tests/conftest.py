"""Shared fixtures: real models and tokenizers that the project builds (no hub, no mocks).

- `demo`: the shipped demo model (korepl/demo_model), loaded through the real loading code.
- `kogpt2_shaped`: random weights with KoGPT2's vocabulary, width, heads and window (two layers for
  speed), saved with save_pretrained and loaded back as a folder.  Its tokenizer is the demo's with
  the BPE vocabulary padded by plain entries to KoGPT2's 51,200 (as KoGPT2's is plain), so every id
  the model can produce decodes.  Built by benchmarks/fixtures.py, the same way as the benchmark's model.
- `hf_greedy`: Hugging Face `generate`'s greedy ids, the reference (benchmarks.fixtures.hf_reference).
- `llama_files`, `llama`: a real llama.cpp server (scripts/llama_server.py builds it once and caches it)
  running the demo model as GGUF f32 on 127.0.0.1, for the remote backend's tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from pathlib import Path

import hypothesis
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not installed with korepl
    sys.path.insert(0, str(REPO))

from benchmarks.fixtures import build_kogpt2_shaped, free_port, hf_reference, stop_process  # noqa: E402
from korepl import context as context_module  # noqa: E402
from korepl.loading import DEMO_MODEL_DIR, load_model, positions  # noqa: E402
from korepl.compiled import CompiledStep, GPT2Step, HubStep  # noqa: E402
from korepl.runner import HubRunner, OpPrecision, StaticRunner  # noqa: E402
from korepl.session import Session  # noqa: E402
from korepl.settings import load_defaults  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may wait on a hub
# korepl's state folder (precision verdicts, history) of the test run's own: never the user's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="korepl-test-state-")
torch.set_num_threads(2)
# Two shared cores: a first call that loads code can take a while; timing is the benchmarks' job.
hypothesis.settings.register_profile("korepl", deadline=None)
hypothesis.settings.load_profile("korepl")


@pytest.fixture(scope="session")
def defaults():
    return load_defaults().decoding


@pytest.fixture(scope="session")
def demo():
    return load_model(str(DEMO_MODEL_DIR), "cpu")


@pytest.fixture(scope="session")
def kogpt2_shaped(tmp_path_factory):
    folder = build_kogpt2_shaped(tmp_path_factory.mktemp("kogpt2_shaped"), n_layer=2, n_embd=768, n_head=12,
                                 seed=1234)
    return load_model(str(folder), "cpu")


@pytest.fixture(scope="session")
def new_session(defaults):
    """new_session(loaded, **settings changes) -> a fresh Session."""

    def make(loaded, **changes):
        return Session(loaded, dataclasses.replace(defaults, **changes))

    return make


@pytest.fixture(scope="session")
def hf_greedy():
    """hf_greedy(loaded, prompt, max_new_tokens, stops=(), **generate kwargs) -> generate's greedy new ids."""
    return hf_reference


@pytest.fixture(params=["static", "hub", "compiled", "hub-compiled"])
def runner(request, monkeypatch, inductor_dir):
    """A cache check run on every runner: GPT-2's preallocated cache with the eager step and with the compiled
    one (korepl/compiled.py, compiled once per model), transformers' DynamicCache, and its StaticCache with the
    model's forward compiled (HubStep, as a GPU runs any other causal LM; here on the CPU under compile = on)."""
    if request.param == "hub":
        monkeypatch.setattr(context_module, "make_runner", lambda model, device, *_: HubRunner(model, device))
    elif request.param == "hub-compiled":
        monkeypatch.setattr(context_module, "make_runner", lambda model, device, *_: HubRunner(
            model, device, compiled_step(model, device, OpPrecision(), inductor_dir, hub=True)))
    elif request.param == "compiled":
        def with_compiled_step(model, device, compiled=None, ops=OpPrecision()):
            if not StaticRunner.supports(model):
                return HubRunner(model, device)
            return StaticRunner(model, device, compiled_step(model, device, ops, inductor_dir), ops)

        monkeypatch.setattr(context_module, "make_runner", with_compiled_step)
    yield request.param
    for step in _COMPILED[request.param == "hub-compiled"].values():  # the graphs served: none fell back to eager
        assert step.state == "compiled", step.describe()


_COMPILED: dict[bool, weakref.WeakKeyDictionary] = {False: weakref.WeakKeyDictionary(),
                                                   True: weakref.WeakKeyDictionary()}


def compiled_step(model, device, ops, inductor_dir, hub: bool = False) -> CompiledStep:
    """The model's compiled step (mode "on": used even where not faster), compiled on first use and kept: korepl's
    own GPT-2 step, or (`hub`) the model's forward over a StaticCache of its whole window."""
    kept = _COMPILED[hub]
    if model not in kept:
        if hub:
            step = HubStep(model, device, "on", inductor_dir, window=positions(model.config))
        else:
            step = GPT2Step(model, device, "on", inductor_dir, ops)
        step.compile_now()
        assert step.ready, step.describe()
        kept[model] = step
    return kept[model]


@pytest.fixture(scope="session")
def inductor_dir(tmp_path_factory):
    """Where the tests' compiled steps keep inductor's artefacts (never the user's cache)."""
    return tmp_path_factory.mktemp("inductor")


LLAMA_BUILD_SCRIPT = REPO / "scripts" / "llama_server.py"


def full_forward_logits(loaded, ids: list[int]) -> torch.Tensor:
    """The reference for every cache check: one plain forward pass over `ids`, no cache."""
    with torch.inference_mode():
        return loaded.model(torch.tensor([ids], device=loaded.device)).logits[0, -1].float()


# --- a real llama.cpp server -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def llama_files():
    """{"server": path to llama-server, "gguf": path to the demo model as GGUF f32}, built if need be."""
    done = subprocess.run([sys.executable, str(LLAMA_BUILD_SCRIPT), "--json"], capture_output=True, text=True)
    if done.returncode == 3:  # nothing cached, and no compiler or cmake to build with
        reason = done.stderr.strip().splitlines()[-1]
        if os.environ.get("CI"):
            pytest.fail(f"CI must build llama-server: {reason}")
        pytest.skip(reason)
    if done.returncode != 0:
        pytest.fail("scripts/llama_server.py failed:\n" + done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


class LlamaServer:
    def __init__(self, files: dict, log: Path, context: int = 1024, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [files["server"], "-m", files["gguf"], "--host", "127.0.0.1", "--port", str(self.port),
                 "-c", str(context), "-np", "1", "-t", "2", "--no-webui", *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_healthy()

    def wait_healthy(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"llama-server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"llama-server not healthy in {seconds:g} s:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def llama(llama_files, tmp_path_factory):
    server = LlamaServer(llama_files, tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()
