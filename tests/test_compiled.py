"""The compiled one-token step (korepl/compiled.py), kept lean: the demo model and the two-layer kogpt2_shaped only,
each compiled once per test session (conftest.compiled_step, into a session-wide temporary inductor folder), and the
later compiles (background, a fresh process, the REPL) load from that folder instead of compiling again.

The cache checks of tests/test_cache.py and tests/test_memory.py run on the compiled step too (the `runner`
fixture's "compiled"): slides, crops, undo, memory changes and a Ctrl+C after a compiled step.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time

import pexpect
import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from benchmarks.fixtures import drain
from conftest import REPO, compiled_step, full_forward_logits
from korepl.compiled import CompiledStep, GPT2Step, HubStep, for_model
from korepl.loading import DEMO_MODEL_DIR, load_model
from korepl.runner import HubRunner, OpPrecision, StaticRunner
from test_repl_pty import ANSI, HANGUL, Terminal

PROMPT = "대한민국의 모든 국민은"
LONG = " ".join(["국회는 법률에 저촉되지 아니하는 범위안에서 의사와 내부규율에 관한 규칙을 제정할 수 있다."] * 60)


def graphs() -> int:
    """Graphs dynamo has made in this process: a recompile would add one."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def counting(step: CompiledStep) -> dict:
    """Count the calls that reach the compiled graph (not the eager steps run.run takes itself)."""
    calls, real = {"n": 0}, step._step

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    step._step = counted
    calls["undo"] = lambda: setattr(step, "_step", real)
    return calls


@pytest.mark.parametrize("model, tokens", [("demo", 40), ("kogpt2_shaped", 16)])
def test_float32_greedy_ids_on_the_compiled_step_equal_generate(request, model, tokens, new_session, hf_greedy,
                                                                   inductor_dir):
    loaded = request.getfixturevalue(model)
    step = compiled_step(loaded.model, loaded.device, loaded.ops, inductor_dir)
    assert loaded.model.dtype == torch.float32 and step.ready and step.mode == "on"
    expected = hf_greedy(loaded, PROMPT, tokens, repetition_penalty=2.0)
    session = new_session(loaded, greedy=True, repetition_penalty=2.0, max_new_tokens=tokens, stop=())
    session.context.runner.compiled = step
    calls = counting(step)
    try:
        session.feed(PROMPT)
        drain(session)
    finally:
        calls["undo"]()
    assert session.ids[len(loaded.tokenizer.encode(PROMPT)):] == expected and len(expected) == tokens
    # Every generated token went through the graph (each is run as it is made, the prompt by the prefill),
    # and it never fell back.
    assert calls["n"] == tokens and step.state == "compiled"


def test_compiled_logits_equal_a_full_forward_at_every_length_and_after_a_slide(demo, new_session, inductor_dir):
    step = compiled_step(demo.model, demo.device, demo.ops, inductor_dir)
    before = graphs()
    ids = demo.tokenizer.encode(LONG)
    assert len(ids) > demo.window
    runner = StaticRunner(demo.model, demo.device, step, demo.ops)
    calls = counting(step)
    try:
        # Short, middling and next-to-last lengths: the graph's lengths are symbolic, not one per length.
        for prefill_to, steps in ((0, 6), (500, 3), (demo.window - 4, 4)):
            if prefill_to > runner.cached_len:
                runner.run(ids[runner.cached_len:prefill_to])  # a prefill (eager)
            for _ in range(steps):
                logits = runner.run([ids[runner.cached_len]])
                torch.testing.assert_close(logits, full_forward_logits(demo, ids[:runner.cached_len]),
                                           rtol=1e-4, atol=1e-4)
        assert calls["n"] == 4 + 3 + 3  # positions 0, 1 and the window's last run eager (CompiledStep.run)
        # A session past the window: the view slides mid-generation, the cache is rebuilt, the graph serves on.
        session = new_session(demo, max_new_tokens=30, seed=11, stop=(), window_keep=0.75)
        session.context.runner.compiled = step
        session.feed(LONG)
        session.context.truncate(demo.window - 10)
        session.context.reset_view(0)
        slides, ran = session.slides, calls["n"]
        drain(session)
        assert session.slides == slides + 1 and calls["n"] - ran >= 20
        torch.testing.assert_close(session.next_logits(),
                                   full_forward_logits(demo, session.ids[session.view_start:]), rtol=1e-4, atol=1e-4)
    finally:
        calls["undo"]()
    assert graphs() == before and step.state == "compiled"


def test_what_is_not_compiled_ends_eager_and_says_why(demo, inductor_dir):
    before = graphs()
    small = for_model(demo.model, demo.device, "auto", inductor_dir, demo.ops)
    small.compile_now()
    assert isinstance(small, GPT2Step) and (small.state, small.ready) == ("eager", False)
    assert small.note == "not worth it for 2.8M parameters (compile = on forces it)"
    int8 = load_model(str(DEMO_MODEL_DIR), "cpu", "float32", "int8")
    packed = for_model(int8.model, int8.device, "on", inductor_dir, int8.ops)
    packed.compile_now()
    assert (packed.state, packed.ready) == ("eager", False) and "int8" in packed.note
    # Other models: their forward over a static cache, which on the CPU only `compile = on` asks for.
    llama = tiny_llama()
    other = for_model(llama, torch.device("cpu"), "auto", inductor_dir, window=64)
    other.compile_now()
    assert isinstance(other, HubStep) and (other.state, other.ready) == ("eager", False)
    assert "compile = on" in other.note and not other.uses_static_cache
    mistral = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=2, sliding_window=8))
    sliding = for_model(mistral, torch.device("cpu"), "on", inductor_dir, window=64)
    sliding.compile_now()
    assert (sliding.state, sliding.ready) == ("eager", False) and "sliding windows" in sliding.note
    assert not sliding.uses_static_cache and for_model(llama, torch.device("cpu"), "on", window=64).uses_static_cache
    assert graphs() == before  # none of them compiled anything


def test_another_kind_of_model_running_later_leaves_the_compiled_forward_in_use(demo, inductor_dir):
    """transformers keeps a global registry of the model classes it has seen run; a graph guarded on its size was
    voided the first time another kind of model ran in the process (found by the cache tests' order)."""
    step = compiled_step(demo.model, demo.device, OpPrecision(), inductor_dir, hub=True)
    runner = HubRunner(demo.model, demo.device, step)
    ids = demo.tokenizer.encode(PROMPT)
    runner.run(ids)
    torch.manual_seed(3)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2)).eval()
    with torch.inference_mode():
        qwen(torch.tensor([[1, 2, 3]]))  # a kind of model this process has not run before
    calls = counting(step)
    try:
        got = runner.run([500])
    finally:
        calls["undo"]()
    assert calls["n"] == 1 and step.state == "compiled", step.describe()
    torch.testing.assert_close(got, full_forward_logits(demo, ids + [500]), rtol=1e-4, atol=1e-4)


def tiny_llama(vocab_size: int = 64, seed: int = 5) -> LlamaForCausalLM:
    """Random weights of a Llama shape: not GPT-2, so it runs on runner.HubRunner."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=1, pad_token_id=3)
    return LlamaForCausalLM(config).eval()


def test_another_models_compiled_forward_writes_generates_ids_and_keeps_its_cache(demo, new_session, hf_greedy,
                                                                                inductor_dir):
    """A Llama-shaped model (with the demo tokenizer) on HubRunner: its forward compiled over a StaticCache, as
    a GPU runs a bigger model, here under compile = on.  Greedy ids equal generate's; every generated token runs
    through the graph; a crop (undo) and a reset keep the cache right, and nothing compiles again."""
    llama = tiny_llama(len(demo.tokenizer))
    loaded = dataclasses.replace(demo, model=llama, name="tiny-llama")
    step = for_model(llama, loaded.device, "on", inductor_dir, window=loaded.window)
    step.compile_now()
    assert isinstance(step, HubStep) and step.state == "compiled", step.describe()
    assert re.fullmatch(r"step [\d.]+ ms compiled, [\d.]+ ms eager; compiled in \d+ s", step.note)
    before = graphs()
    expected = hf_greedy(loaded, PROMPT, 24, repetition_penalty=2.0)
    session = new_session(dataclasses.replace(loaded, compiled=step), greedy=True, repetition_penalty=2.0,
                          max_new_tokens=24, stop=())
    runner = session.context.runner
    assert isinstance(runner, HubRunner) and runner.compiled is step and runner.cache.get_max_length() == loaded.window
    calls = counting(step)
    try:
        session.feed(PROMPT)
        drain(session)
        assert session.ids[len(demo.tokenizer.encode(PROMPT)):] == expected and len(expected) == 24
        assert calls["n"] == 24
        session.context.truncate(len(session.ids) - 7)  # undo part of it: the cache is cut back in place
        torch.testing.assert_close(session.next_logits(), full_forward_logits(loaded, session.ids), rtol=1e-4,
                                   atol=1e-4)
        drain(session)
        torch.testing.assert_close(session.next_logits(), full_forward_logits(loaded, session.ids), rtol=1e-4,
                                   atol=1e-4)
        runner.reset()
        assert runner.run(session.ids[:5]) is not None and runner.cached_len == 5
        torch.testing.assert_close(runner.run([session.ids[5]]), full_forward_logits(loaded, session.ids[:6]),
                                   rtol=1e-4, atol=1e-4)
    finally:
        calls["undo"]()
    assert step.state == "compiled" and graphs() == before


def test_compiling_in_the_background_while_the_writer_generates(demo, new_session, inductor_dir):
    compiled_step(demo.model, demo.device, demo.ops, inductor_dir)  # the graph on disk: here it mostly loads
    step = GPT2Step(demo.model, demo.device, "on", inductor_dir, demo.ops)
    with_step = new_session(demo, greedy=True, repetition_penalty=2.0, max_new_tokens=4, stop=())
    with_step.context.runner.compiled = step
    plain = new_session(demo, greedy=True, repetition_penalty=2.0, max_new_tokens=4, stop=())
    assert step.state == "waiting"
    step.start()
    seen, deadline = [], time.monotonic() + 240
    with_step.feed(PROMPT)
    plain.feed(PROMPT)
    while step.state in ("waiting", "compiling") and time.monotonic() < deadline:
        for _ in with_step.generate():  # the writer goes on meanwhile, on the eager step
            seen.append(step.state)
        drain(plain)
    assert step.state == "compiled", step.describe()
    assert "compiling" in seen  # tokens were made while it compiled
    assert re.fullmatch(r"step [\d.]+ ms compiled, [\d.]+ ms eager; compiled in \d+ s", step.note)
    calls = counting(step)
    try:
        drain(with_step)
        drain(plain)
    finally:
        calls["undo"]()
    assert calls["n"] == 4  # now through the graph
    assert with_step.ids == plain.ids
    torch.testing.assert_close(with_step.next_logits(), plain.next_logits(), rtol=1e-4, atol=1e-4)


def test_a_guard_that_fails_falls_back_to_eager_without_compiling(demo, inductor_dir):
    """float64 caches (a runner whose attention runs in float64) do not fit the float32 graph: the step runs eager,
    correct, and the compiled step says it stopped fitting; the writer's thread compiles nothing."""
    shared = compiled_step(demo.model, demo.device, demo.ops, inductor_dir)
    step = GPT2Step(demo.model, demo.device, "on", inductor_dir, demo.ops)
    step._step, step.state = shared._step, "compiled"  # the same graph, in a step of its own to spoil
    ids = demo.tokenizer.encode(PROMPT)
    usual = StaticRunner(demo.model, demo.device, step, demo.ops)
    wider = StaticRunner(demo.model, demo.device, step, OpPrecision(attention=torch.float64))
    eager = StaticRunner(demo.model, demo.device, None, OpPrecision(attention=torch.float64))
    assert wider.keys.dtype == torch.float64 and wider.upcast
    before = graphs()
    for runner in (usual, wider, eager):
        runner.run(ids)
    torch.testing.assert_close(usual.run([500]), full_forward_logits(demo, ids + [500]), rtol=1e-4, atol=1e-4)
    assert step.state == "compiled" and step.ready  # the usual caches fit
    began = time.perf_counter()
    got = wider.run([500])
    seconds = time.perf_counter() - began
    assert step.state == "eager" and not step.ready and step.note.startswith("the compiled step stopped fitting (")
    torch.testing.assert_close(got, eager.run([500]), rtol=0, atol=0)  # exactly the eager step's
    torch.testing.assert_close(got, full_forward_logits(demo, ids + [500]), rtol=1e-4, atol=1e-4)
    assert graphs() == before, f"compiled on the caller's thread ({seconds:.1f} s)"
    torch.testing.assert_close(usual.run([7]), full_forward_logits(demo, ids + [500, 7]), rtol=1e-4, atol=1e-4)
    assert shared.state == "compiled" and shared.ready  # the other runners' step is untouched


def test_caches_laid_out_otherwise_fall_back_too_without_compiling(demo, inductor_dir):
    """The same shape and dtype, positions outermost in memory: a graph for these strides would compile (where the
    float64 one above fails to), so this is where compiling on the writer's thread would show as a new graph."""
    shared = compiled_step(demo.model, demo.device, demo.ops, inductor_dir)
    step = GPT2Step(demo.model, demo.device, "on", inductor_dir, demo.ops)
    step._step, step.state = shared._step, "compiled"
    ids = demo.tokenizer.encode(PROMPT)
    odd = StaticRunner(demo.model, demo.device, step, demo.ops)
    layers, heads, window, width = odd.keys.shape
    for name in ("keys", "values"):
        setattr(odd, name, torch.zeros(window, layers, heads, width).permute(1, 2, 0, 3))
    odd.layer_keys, odd.layer_values = odd.keys.unbind(0), odd.values.unbind(0)
    odd.run(ids)
    before, frames = graphs(), dict(torch._dynamo.utils.counters["frames"])
    got = odd.run([500])
    assert step.state == "eager" and not step.ready and "stopped fitting" in step.note
    torch.testing.assert_close(got, full_forward_logits(demo, ids + [500]), rtol=1e-4, atol=1e-4)
    assert graphs() == before and dict(torch._dynamo.utils.counters["frames"]) == frames


COMPILE_IN_A_FRESH_PROCESS = """
import json, sys, torch
torch.set_num_threads(2)  # as conftest
from korepl.compiled import for_model
from korepl.loading import load_model
loaded = load_model(sys.argv[1], "cpu")
step = for_model(loaded.model, loaded.device, "on", sys.argv[2], loaded.ops)
step.compile_now()
counters = torch._dynamo.utils.counters["inductor"]
print(json.dumps({"state": step.state, "hits": counters["fxgraph_cache_hit"], "misses": counters["fxgraph_cache_miss"]}))
"""


def test_a_fresh_process_loads_the_compiled_step_from_the_disk_cache(demo, inductor_dir):
    compiled_step(demo.model, demo.device, demo.ops, inductor_dir)  # compiled here, once, into inductor_dir
    stored = sorted(path.relative_to(inductor_dir) for path in inductor_dir.rglob("*") if path.is_file())
    assert any(path.parts[0] == "fxgraph" for path in stored), stored[:20]
    done = subprocess.run([sys.executable, "-c", COMPILE_IN_A_FRESH_PROCESS, str(DEMO_MODEL_DIR), str(inductor_dir)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run == {"state": "compiled", "hits": run["hits"], "misses": 0} and run["hits"] >= 1, run


class ToolbarTerminal(Terminal):
    """A Terminal that shows the bottom toolbar: prompt_toolkit draws it only where it knows the screen's height,
    so this one answers its cursor position requests (the others turn them off with PROMPT_TOOLKIT_NO_CPR)."""

    def until(self, pattern: str, timeout: int = 60) -> str:
        before, deadline = "", time.monotonic() + timeout
        while self.child.expect([pattern, r"\x1b\[6n"], timeout=max(1, deadline - time.monotonic())) == 1:
            before += self.child.before
            self.child.send("\x1b[1;1R")  # the cursor at the top left
        text = ANSI.sub("", before + self.child.before)
        self.log += text
        return text


def test_the_repl_toolbar_says_compiling_then_compiled(tmp_path, demo, inductor_dir):
    compiled_step(demo.model, demo.device, demo.ops, inductor_dir)  # the REPL's compile then mostly loads
    term = ToolbarTerminal(tmp_path, "--compile", "on", "--greedy", "--max-new-tokens", "8",
                    extra_env={"PROMPT_TOOLKIT_NO_CPR": "0", "XDG_CACHE_HOME": str(tmp_path / "cache"),
                               "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)})
    try:
        out = term.run(PROMPT)
        assert re.search(HANGUL, out.split("국민은", 1)[1])
        assert "tok/s" in out and "compil" not in term.log, term.log[-2000:]  # nothing compiles before it
        term.until("compiling…", timeout=60)  # at the next prompt it starts, and the toolbar says so
        out = term.run("국가는")  # the writer goes on meanwhile
        assert re.search(HANGUL, out.split("국가는", 1)[1])
        for _ in range(480):  # each new prompt draws the whole toolbar afresh
            if re.search(r"│ compiled(?!…)", term.run("/context")):
                break
            time.sleep(0.25)
        else:
            raise AssertionError("the toolbar never said compiled:\n" + term.log[-3000:])
        row = re.search(r"compile +(.*)", term.run("/settings")).group(1)
        assert re.match(r"on: compiled \(step [\d.]+ ms compiled, [\d.]+ ms eager; compiled in \d+ s\)", row), row
        out = term.run("국회는")  # a continuation on the compiled step
        assert re.search(HANGUL + "{2}", out.split("국회는", 1)[1]) and "Traceback" not in term.log
        assert not (tmp_path / "cache" / "korepl" / "inductor").exists()  # the chosen folder, not korepl's
    finally:
        assert term.close() == 0


def test_leaving_while_it_compiles_saves_and_exits_cleanly(tmp_path):
    """A cold compile (its own empty cache), left halfway."""
    term = Terminal(tmp_path, "--compile", "on", "--max-new-tokens", "5",
                    extra_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    term.run(PROMPT)
    assert re.search(r"compile +on: (waiting|compiling)", term.run("/settings"))
    term.child.sendcontrol("d")
    term.child.expect("saved to", timeout=30)
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()
    assert term.child.exitstatus == 0 and "terminate called" not in term.child.before  # not aborted by the compiler


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here (scripts/gpu_check.sh runs it on a GPU)")
def test_on_a_gpu_another_models_forward_replays_as_cuda_graphs(demo, new_session, hf_greedy, inductor_dir):
    """The same checks as on the CPU above, on CUDA graphs: a static cache from the start, the graph recorded on
    the compiling thread and replayed from this one, ids equal to generate's, nothing compiled again."""
    llama = tiny_llama(len(demo.tokenizer)).cuda()
    loaded = dataclasses.replace(demo, model=llama, name="tiny-llama", device=torch.device("cuda"))
    step = for_model(llama, loaded.device, "on", inductor_dir, window=loaded.window)
    assert step.uses_static_cache
    step.start()
    session = new_session(dataclasses.replace(loaded, compiled=step), greedy=True, repetition_penalty=2.0,
                          max_new_tokens=24, stop=())
    session.feed(PROMPT)
    drain(session)  # on the eager step over the static cache while it compiles
    deadline = time.monotonic() + 300
    while step.state in ("waiting", "compiling") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert step.state == "compiled", step.describe()
    expected = hf_greedy(loaded, PROMPT, 48, repetition_penalty=2.0)
    calls = counting(step)
    try:
        drain(session)
        assert session.ids[len(demo.tokenizer.encode(PROMPT)):] == expected and calls["n"] == 24
        session.context.truncate(len(session.ids) - 7)
        torch.testing.assert_close(session.next_logits(), full_forward_logits(loaded, session.ids), rtol=1e-3,
                                   atol=1e-3)
    finally:
        calls["undo"]()
    assert step.state == "compiled", step.describe()
