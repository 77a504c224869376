"""The compiled one-token step (korepl/compiled.py): the same ids as generate, one graph for every length, never
compiling on the writer's thread, compiled in the background, kept on disk; and the REPL's toolbar says so.

The cache checks of tests/test_cache.py and tests/test_memory.py run on it too (the `runner` fixture's "compiled").
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
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.fixtures import drain
from conftest import compiled_step, full_forward_logits
from korepl import paths
from korepl.compiled import CompiledStep, unsupported
from korepl.loading import DEMO_MODEL_DIR, load_model
from korepl.repl import Repl
from korepl.runner import StaticRunner
from korepl.settings import load_defaults
from test_repl_pty import Terminal

PROMPT = "대한민국의 모든 국민은"


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def with_compiled(loaded, inductor_dir, new_session, **changes):
    step = compiled_step(loaded.model, loaded.device, loaded.ops, inductor_dir)
    session = new_session(loaded, **changes)
    session.context.runner.compiled = step
    return session, step


@pytest.mark.parametrize("model, tokens", [("demo", 60), ("kogpt2_shaped", 24)])
def test_greedy_ids_equal_generate_with_the_compiled_step(request, model, tokens, new_session, hf_greedy, inductor_dir):
    loaded = request.getfixturevalue(model)
    expected = hf_greedy(loaded, PROMPT, tokens, repetition_penalty=2.0)
    session, step = with_compiled(loaded, inductor_dir, new_session, greedy=True, max_new_tokens=tokens, stop=())
    calls = {"n": 0}
    real = step._step

    def counted(*args):
        calls["n"] += 1
        return real(*args)

    step._step = counted
    try:
        session.feed(PROMPT)
        drain(session)
    finally:
        step._step = real
    assert session.ids[len(loaded.tokenizer.encode(PROMPT)):] == expected
    assert calls["n"] >= tokens - 3 and step.state == "compiled"  # it ran the steps, and never fell back


def test_one_graph_serves_every_length_through_slides(demo, new_session, inductor_dir):
    session, step = with_compiled(demo, inductor_dir, new_session, max_new_tokens=700, seed=3, stop=(),
                                  window_keep=0.5)
    session.feed(PROMPT)
    before = graphs()
    drain(session)  # past the window (1024) at least once
    drain(session)
    assert session.context.slides >= 1 and graphs() == before and step.state == "compiled"
    torch.testing.assert_close(session.next_logits(), full_forward_logits(demo, session.ids[session.view_start:]),
                               rtol=1e-4, atol=1e-4)


def test_a_step_that_would_need_a_new_graph_runs_eager_and_says_so(demo, inductor_dir):
    """Caches laid out otherwise (other strides) fail the graph's guards: on the writer's thread that never
    compiles; the step runs eager, and the compiled step says it stopped fitting."""
    shared = compiled_step(demo.model, demo.device, demo.ops, inductor_dir)
    step = CompiledStep(demo.model, demo.device, "on", inductor_dir, demo.ops)
    step._step, step.state = shared._step, "compiled"  # the same graph, in a step of its own to spoil
    ids = demo.tokenizer.encode(PROMPT)
    usual, odd = StaticRunner(demo.model, demo.device), StaticRunner(demo.model, demo.device)
    layers, heads, window, width = odd.keys.shape
    for name in ("keys", "values"):  # the same shape, positions outermost in memory
        setattr(odd, name, torch.zeros(window, layers, heads, width).permute(1, 2, 0, 3))
    odd.layer_keys, odd.layer_values = odd.keys.unbind(0), odd.values.unbind(0)
    before = graphs()
    with torch.inference_mode():
        usual.run(ids)
        odd.run(ids)
        expected = usual.run([500])
        usual.crop(len(ids))
        assert torch.allclose(step.run(usual, 500)[0].float(), expected, atol=1e-4)
        assert step.state == "compiled"  # the usual caches fit the graph
        got = step.run(odd, 500)[0].float()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert step.state == "eager" and "stopped fitting" in step.note and not step.ready
    assert graphs() == before


def test_what_is_not_compiled_says_why(demo, inductor_dir):
    small = CompiledStep(demo.model, demo.device, "auto", inductor_dir, demo.ops)
    before = graphs()
    small.compile_now()
    assert (small.state, small.ready) == ("eager", False) and "not worth it for 2.8M parameters" in small.note
    int8 = load_model(str(DEMO_MODEL_DIR), "cpu", "float32", "int8")
    assert "int8" in unsupported(int8.model, int8.device)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert "GPT-2" in unsupported(llama, torch.device("cpu"))
    assert graphs() == before


def test_compiling_in_the_background_while_the_eager_step_writes(kogpt2_shaped, new_session, tmp_path):
    step = CompiledStep(kogpt2_shaped.model, kogpt2_shaped.device, "on", tmp_path / "inductor", kogpt2_shaped.ops)
    session = new_session(kogpt2_shaped, greedy=True, max_new_tokens=6, stop=())
    session.context.runner.compiled = step
    plain = new_session(kogpt2_shaped, greedy=True, max_new_tokens=6, stop=())
    step.start()
    seen = set()
    session.feed(PROMPT)
    plain.feed(PROMPT)
    for _ in range(600):  # while it compiles, the writer goes on
        seen.add(step.state)
        if step.state in ("compiled", "eager"):
            break
        drain(session)
        drain(plain)
        time.sleep(0.05)
    assert "compiling" in seen and step.state == "compiled", step.describe()
    assert re.fullmatch(r"step \S+ ms compiled, \S+ ms eager; compiled in \d+ s", step.note)
    drain(session)
    drain(plain)
    assert session.ids == plain.ids


COMPILE_IN_A_FRESH_PROCESS = """
import json, sys, torch
from korepl.compiled import CompiledStep
from korepl.loading import load_model
loaded = load_model(sys.argv[1], "cpu")
step = CompiledStep(loaded.model, loaded.device, "on", sys.argv[2], loaded.ops)
step.compile_now()
counters = torch._dynamo.utils.counters["inductor"]
print(json.dumps({"state": step.state, "hits": counters["fxgraph_cache_hit"], "misses": counters["fxgraph_cache_miss"]}))
"""


def test_a_second_launch_loads_what_the_first_compiled(tmp_path):
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", COMPILE_IN_A_FRESH_PROCESS, str(DEMO_MODEL_DIR),
                               str(tmp_path / "inductor")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [run["state"] for run in runs] == ["compiled", "compiled"]
    assert runs[0]["misses"] >= 1 and runs[0]["hits"] == 0  # the first built the graph and stored it
    assert runs[1]["hits"] >= 1 and runs[1]["misses"] == 0  # the second found it on disk
    assert any((tmp_path / "inductor").iterdir())


def test_the_repl_says_compiling_then_compiled(tmp_path):
    term = Terminal(tmp_path, "--compile", "on", "--greedy", "--max-new-tokens", "8",
                    extra_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "chosen")})  # the user's choice is kept
    try:
        first = term.run(PROMPT)  # the first continuation runs before anything compiles
        assert "compil" not in first
        states = []
        for _ in range(400):
            row = re.search(r"compile +(.*)", term.run("/settings")).group(1)
            states.append(row.split(" ", 2)[1])
            if "compiling" not in row:
                break
            time.sleep(0.25)
        assert "compiling" in states[0] or "compiling" in states, states
        assert re.match(r"on: compiled \(step \S+ ms compiled", row), row
        out = term.run("국회는")
        assert re.search(r"[\uac00-\ud7a3]", out.split("국회는", 1)[1]) and "Traceback" not in term.log
        assert any((tmp_path / "chosen").iterdir())
    finally:
        assert term.close() == 0


def test_the_toolbar_says_compiling_then_compiled(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "inductor_cache_dir", lambda: tmp_path / "inductor")
    repl = Repl(dataclasses.replace(load_defaults(), model=str(DEMO_MODEL_DIR), device="cpu", compile="on"), [])
    assert repl._load.done.wait(60) and repl._load.error is None
    session = repl.ensure_session()
    repl._compile_when_idle()
    assert repl._load.loaded.compiled.state == "waiting"  # no continuation yet: only a timer
    session.feed(PROMPT)
    drain(session)
    repl._compile_when_idle()  # at the prompt after a continuation: now
    seen = []
    for _ in range(1200):
        seen.append("".join(fragment[1] for fragment in repl._toolbar()))
        if repl._load.loaded.compiled.state not in ("waiting", "compiling"):
            break
        time.sleep(0.1)
    assert any(line.endswith(" │ compiling…") for line in seen), seen[:3]
    assert "".join(fragment[1] for fragment in repl._toolbar()).endswith(" │ compiled")


def test_leaving_while_it_compiles_saves_and_exits_cleanly(tmp_path):
    term = Terminal(tmp_path, "--compile", "on", "--max-new-tokens", "5",
                    extra_env={"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    term.run(PROMPT)
    assert re.search(r"compile +on: (waiting|compiling)", term.run("/settings"))
    term.child.sendcontrol("d")
    term.child.expect("saved to", timeout=30)
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()
    assert term.child.exitstatus == 0 and "terminate called" not in term.child.before  # not aborted by the compiler
