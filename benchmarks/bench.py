"""Side-by-side speed benchmark for korepl: a table on stdout, JSON to a file.  Nothing here asserts a time.

    python benchmarks/bench.py                 # KoGPT2's shape (12 layers, 768 wide), several minutes
    python benchmarks/bench.py --quick         # a tiny model and few tokens: a smoke test for CI
    python benchmarks/bench.py --out FILE.json --device cpu|cuda --threads N --model-dir DIR

Speed is reported as ratios against baselines run in the same process (Hugging Face `generate`, the
source study's uncached loop, a re-run of the whole context, the physical floor of the matrix–vector
products and the machine's measured memory bandwidth), because absolute numbers depend on the CPU.
Every timing is the best of a few repeats after a warm-up run.  The model has KoGPT2's exact shape
with random weights (speed does not depend on the weights' values); it is built once into a cache folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO) not in sys.path:  # run from a checkout without installing korepl
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

from korepl import precision, sampling, store  # noqa: E402
from korepl.loading import DEMO_MODEL_DIR, LoadedModel, ModelUnavailable, load_model, load_tokenizer  # noqa: E402
from korepl.runner import StaticRunner  # noqa: E402
from korepl.session import Session  # noqa: E402
from korepl.settings import Settings, load_defaults  # noqa: E402

KOGPT2_VOCAB = 51_200
PROMPT = "수강신청에서 원하는 강의를 신청하기 위해서는"
# Plain Korean prose for building contexts of an exact token count (speed does not depend on the words).
CORPUS = (
    "수강신청에서 원하는 강의를 신청하기 위해서는 먼저 학교 홈페이지에 접속하여 학번과 비밀번호로 로그인해야 한다. "
    "신청 기간이 시작되기 전에 시간표를 미리 짜 두면 인기 있는 과목도 놓치지 않을 수 있다. "
    "도서관은 아침 일곱 시에 문을 열고 밤 열한 시에 닫으며, 시험 기간에는 하루 종일 열려 있다. "
    "봄이 오면 캠퍼스의 벚꽃길을 따라 산책하는 학생들이 많아지고, 작은 음악회가 열리기도 한다. "
    "글을 쓸 때에는 하고 싶은 말을 한 문장으로 먼저 정리한 다음, 그 문장을 뒷받침하는 근거를 차례대로 적어 나가는 것이 좋다. "
    "어제 내린 비로 강물이 불어나서 다리 아래의 산책로는 당분간 이용할 수 없다고 한다. "
)
LINE_SOURCE = "오늘 배운 내용을 바탕으로 다음 주까지 짧은 글을 한 편 써서 제출하고, 궁금한 점은 게시판에 남겨 주세요."
PAD_WORDS = ("수", "것", "그", "더", "잘", "및", "또", "이")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16", "fma", "f16c")


# --- what a run measures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How big the model is and how much work each measurement does."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    decode_lengths: tuple[int, ...]
    decode_repeats: dict[int, int]
    study_tokens: int
    step_context: int
    step_tokens: int
    repeats: int  # for the shorter measurements
    floor_repeats: int
    ttft_contexts: tuple[int, ...]
    line_tokens: int
    bandwidth_bytes: int
    startup_repeats: int
    memory_context: int
    memory_new_tokens: int
    profile_steps: int


FULL = Plan("full", n_layer=12, n_embd=768, n_head=12, decode_lengths=(64, 512), decode_repeats={64: 3, 512: 2},
            study_tokens=64, step_context=100, step_tokens=32, repeats=3, floor_repeats=20,
            ttft_contexts=(0, 256, 512, 900), line_tokens=20, bandwidth_bytes=1 << 30, startup_repeats=3,
            memory_context=900, memory_new_tokens=64, profile_steps=8)
QUICK = Plan("quick", n_layer=2, n_embd=128, n_head=4, decode_lengths=(16,), decode_repeats={16: 2},
             study_tokens=8, step_context=100, step_tokens=8, repeats=1, floor_repeats=5,
             ttft_contexts=(0, 256, 512, 900), line_tokens=20, bandwidth_bytes=1 << 28, startup_repeats=1,
             memory_context=900, memory_new_tokens=16, profile_steps=4)


@dataclass
class Report:
    """The table's rows and the JSON's results, filled in as measurements finish."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, measurement: str, value: str, versus: str = "—") -> None:
        self.rows.append((measurement, value, versus))
        print(f"  {measurement}: {value}" + (f"   ({versus})" if versus != "—" else ""), file=sys.stderr, flush=True)


# --- timing ----------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
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


def interleaved(contenders: dict[str, Callable[[], object] | tuple[Callable[[], object], Callable[[object], object]]],
                repeats: int, device: torch.device, warmup: bool = True) -> dict[str, tuple[float, list[float], object]]:
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


# --- the model --------------------------------------------------------------------------------------


def model_spec(plan: Plan) -> dict:
    return {"vocab_size": KOGPT2_VOCAB, "n_positions": 1024, "n_embd": plan.n_embd, "n_layer": plan.n_layer,
            "n_head": plan.n_head, "activation_function": "gelu_new", "bos_token_id": 1, "eos_token_id": 1,
            "pad_token_id": 3, "seed": 0, "tokenizer": "demo BPE, vocabulary padded with plain filler entries"}


def ensure_model(folder: Path, plan: Plan) -> Path:
    """A KoGPT2-shaped random-weight model and a 51,200-token tokenizer in `folder`, built once."""
    spec = model_spec(plan)
    marker = folder / "korepl-bench-model.json"
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return folder
        shutil.rmtree(folder)  # an older benchmark model of ours (the marker says so): build it again
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty and is not a benchmark model folder; give another --model-dir")
    print(f"building the {plan.name} benchmark model in {folder} (once)", file=sys.stderr, flush=True)
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = GPT2Config(**{k: v for k, v in spec.items() if k not in ("seed", "tokenizer")})
        torch.manual_seed(spec["seed"])
        GPT2LMHeadModel(config).save_pretrained(building)
        padded_tokenizer(KOGPT2_VOCAB).save_pretrained(building)
        (building / "korepl-bench-model.json").write_text(json.dumps(spec))
        if folder.exists():
            folder.rmdir()
        building.rename(folder)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return folder


def padded_tokenizer(size: int):
    """The demo tokenizer with its BPE vocabulary padded to `size` by plain entries, as KoGPT2's is plain.

    Padding with added tokens instead would cost ~110 MB of memory and seconds of loading that
    KoGPT2's own tokenizer does not, and the benchmark would blame korepl for them.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from korepl.loading import KOGPT2_SPECIAL_TOKENS

    data = json.loads(load_tokenizer(str(DEMO_MODEL_DIR)).backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<filler{i}>": i for i in range(max(vocab.values()) + 1, size)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), **KOGPT2_SPECIAL_TOKENS)


@functools.cache
def default_decoding() -> Settings:
    """The shipped defaults, read once (a run keeps the settings it started with)."""
    return load_defaults().decoding


def greedy_settings(max_new_tokens: int) -> Settings:
    """Greedy with the source study's repetition penalty, nothing else that changes the ids."""
    return dataclasses.replace(default_decoding(), greedy=True, stop=(), max_new_tokens=max_new_tokens,
                               repetition_penalty=2.0, no_repeat_ngram_size=0, repetition_window=None, ban=(),
                               min_new_tokens=0, mode="write")


def text_with_tokens(encode: Callable[[str], list[int]], count: int, source: str = CORPUS) -> str:
    """A text of whole words that encodes to exactly `count` tokens (prose, padded with one-token words)."""
    text = ""
    for word in cycle(source.split()):
        candidate = f"{text} {word}" if text else word
        if len(encode(candidate)) > count:
            break
        text = candidate
    for pad in PAD_WORDS:
        while len(encode(text)) < count:
            candidate = f"{text} {pad}" if text else pad
            if len(encode(candidate)) != len(encode(text)) + 1:
                break
            text = candidate
    if len(encode(text)) != count:
        raise RuntimeError(f"could not build a text of exactly {count} tokens")
    return text


# --- 1. decoding speed ----------------------------------------------------------------------------------


def korepl_continue(loaded: LoadedModel, prompt: str, new_tokens: int, session: Session | None = None) -> Session:
    """Feed the prompt to a new session and write `new_tokens` greedily: the prompt's prefill, then one step each."""
    session = session or Session(loaded, greedy_settings(new_tokens))
    session.feed(prompt)
    for _ in session.generate():
        pass
    return session


def korepl_task(loaded: LoadedModel, prompt: str, new_tokens: int):
    """(prepare, run) for `interleaved`: the session is made untimed, as the REPL makes it before the first line."""
    return (lambda: Session(loaded, greedy_settings(new_tokens)),
            lambda session: korepl_continue(loaded, prompt, new_tokens, session))


def hf_continue(model, prompt_ids: list[int], new_tokens: int, device: torch.device,
                suppress: list[int]) -> list[int]:
    """generate's greedy ids; `suppress`: the special tokens korepl never writes (HF suppress_tokens)."""
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                         repetition_penalty=2.0, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=3,
                         use_cache=True, suppress_tokens=suppress)
    return out[0, len(prompt_ids):].tolist()


def study_continue(model, prompt_ids: list[int], new_tokens: int, device: torch.device, seed: int = 0) -> list[int]:
    """The source study's loop: the whole text through the model for every token, then random.choice(top 5)."""
    rng = random.Random(seed)
    ids = list(prompt_ids)
    for _ in range(new_tokens):
        logits = model(torch.tensor([ids], dtype=torch.long, device=device), use_cache=False).logits[0, -1]
        ids.append(rng.choice(torch.topk(logits, 5).indices.tolist()))
    return ids[len(prompt_ids):]


def measure_decoding(loaded: LoadedModel, plan: Plan, report: Report) -> None:
    device, model = loaded.device, loaded.model
    reference = Session(loaded, greedy_settings(1))
    prompt_ids, suppress = reference.encode(PROMPT), sorted(reference.controls.suppress_ids)
    korepl_continue(loaded, PROMPT, 8)  # warm-ups: the first calls load code and size buffers
    hf_continue(model, prompt_ids, 8, device, suppress)
    for n in plan.decode_lengths:
        repeats = plan.decode_repeats[n]
        runs = interleaved({"korepl": korepl_task(loaded, PROMPT, n),
                            "generate": lambda: hf_continue(model, prompt_ids, n, device, suppress)}, repeats, device,
                           warmup=False)
        (k_best, k_times, session), (h_best, h_times, hf_ids) = runs["korepl"], runs["generate"]
        korepl_ids = session.ids[len(prompt_ids):]
        same = korepl_ids == hf_ids
        k_rate, h_rate = n / k_best, n / h_best
        report.results[f"decode_{n}"] = {
            "new_tokens": n, "prompt_tokens": len(prompt_ids), "timing": f"best of {repeats}, korepl and generate taking turns, after a warm-up",
            "korepl_tok_s": k_rate, "generate_tok_s": h_rate, "korepl_vs_generate": k_rate / h_rate,
            "same_ids_as_generate": same, "korepl_new_tokens": len(korepl_ids), "generate_new_tokens": len(hf_ids),
            "korepl_times_s": k_times, "generate_times_s": h_times,
        }
        report.row(f"decode {n} tokens, korepl Session (greedy, penalty 2.0)", f"{k_rate:.1f} tok/s",
                   f"{k_rate / h_rate:.2f}× generate")
        report.row(f"decode {n} tokens, HF model.generate", f"{h_rate:.1f} tok/s", "baseline")
        report.row(f"decode {n} tokens, korepl ids == generate ids", str(same),
                   "—" if same else f"korepl {len(korepl_ids)} ids, generate {len(hf_ids)}")
    n = plan.study_tokens
    study_continue(model, prompt_ids, 2, device)
    runs = interleaved({"study": lambda: study_continue(model, prompt_ids, n, device),
                        "korepl": korepl_task(loaded, PROMPT, n)}, 1, device, warmup=False)
    (s_best, s_times, _), (k_best, _, _) = runs["study"], runs["korepl"]
    s_rate, k_rate = n / s_best, n / k_best
    report.results["decode_study_loop"] = {
        "new_tokens": n, "timing": "one run each after a short warm-up (it is slow)", "study_tok_s": s_rate,
        "korepl_tok_s": k_rate, "korepl_vs_study": k_rate / s_rate, "study_times_s": s_times,
    }
    report.row(f"decode {n} tokens, source study's loop (no cache, random top-5)", f"{s_rate:.1f} tok/s",
               f"korepl ({k_rate:.1f} tok/s) = {k_rate / s_rate:.1f}× this")


# --- 2 and 3. the floor, the step, the bandwidth ----------------------------------------------------


def weight_matrices(model) -> list[tuple[str, torch.Tensor]]:
    """Every matrix one token multiplies, in Conv1D's [in, out] layout, in the order a step reads them."""
    matrices = []
    for block in model.transformer.h:
        matrices += [("c_attn", block.attn.c_attn.weight), ("attn c_proj", block.attn.c_proj.weight),
                     ("c_fc", block.mlp.c_fc.weight), ("mlp c_proj", block.mlp.c_proj.weight)]
    matrices.append(("lm_head", model.lm_head.weight.t()))  # nn.Linear keeps [out, in]
    return matrices


def time_products(products: list[tuple[str, Callable, torch.Tensor, torch.Tensor]], repeats: int,
                  device: torch.device) -> tuple[float, dict[str, float]]:
    """Best total seconds over all products, and each kind's best sum; the chain streams weights from memory."""
    best_total, best_kind = float("inf"), {}
    for repeat in range(repeats + 1):  # the first pass is a warm-up
        per_kind: dict[str, float] = {}
        for kind, op, x, w in products:
            seconds, _ = timed(lambda: op(x, w), device)
            per_kind[kind] = per_kind.get(kind, 0.0) + seconds
        if repeat:
            best_total = min(best_total, sum(per_kind.values()))
            best_kind = {k: min(v, best_kind.get(k, float("inf"))) for k, v in per_kind.items()}
    return best_total, best_kind


def measure_floor(loaded: LoadedModel, plan: Plan, report: Report) -> dict:
    device, model = loaded.device, loaded.model
    matrices = weight_matrices(model)
    inputs = {w.shape[0]: torch.randn(1, w.shape[0], device=device) for _, w in matrices}
    with torch.inference_mode():
        in_out = [(kind, torch.matmul, inputs[w.shape[0]], w.contiguous()) for kind, w in matrices]
        out_in = [(kind, F.linear, inputs[w.shape[0]], w.t().contiguous()) for kind, w in matrices]
        in_out_s, in_out_kind = time_products(in_out, plan.floor_repeats, device)
        out_in_s, out_in_kind = time_products(out_in, plan.floor_repeats, device)
    del in_out, out_in
    # As the model stores them: blocks in Conv1D's [in, out] (x @ W via addmm), lm_head as nn.Linear [out, in].
    stored_s = sum(v for k, v in in_out_kind.items() if k != "lm_head") + out_in_kind["lm_head"]
    floor_s = min(in_out_s, out_in_s, stored_s)
    hidden = model.config.n_embd
    weight_bytes = sum(w.numel() * w.element_size() for _, w in matrices) + 2 * hidden * 4  # + wte and wpe rows
    report.results["floor"] = {
        "timing": f"best of {plan.floor_repeats} passes over all matrices after a warm-up pass",
        "in_out_x_at_W_s": in_out_s, "out_in_F_linear_s": out_in_s, "as_stored_s": stored_s,
        "in_out_by_kind_s": in_out_kind, "out_in_by_kind_s": out_in_kind,
        "weight_bytes_per_token": weight_bytes, "matrices": len(matrices),
    }
    faster = "[in,out] x @ W" if in_out_s < out_in_s else "[out,in] F.linear"
    report.row("floor: all matrix–vector products, [in,out] layout (x @ W)", f"{in_out_s * 1e3:.2f} ms",
               f"{in_out_s / out_in_s:.2f}× the [out,in] time")
    report.row("floor: all matrix–vector products, [out,in] layout (F.linear)", f"{out_in_s * 1e3:.2f} ms",
               f"faster layout: {faster}")
    report.row("floor: as the model stores them (blocks [in,out], lm_head [out,in])", f"{stored_s * 1e3:.2f} ms")
    report.row("weights read per token (fp32 matrices + embedding rows)", f"{weight_bytes / 2**20:.1f} MiB")
    return {"floor_s": floor_s, "stored_s": stored_s, "weight_bytes": weight_bytes}


def korepl_step_seconds(loaded: LoadedModel, context: str, tokens: int) -> float:
    """Seconds per generated token, from an already prefilled context (each token is one forward step)."""
    session = Session(loaded, greedy_settings(tokens))
    session.feed(context)
    session.next_logits()
    seconds, _ = timed(lambda: [None for _ in session.generate()], loaded.device)
    if session.last_ending.new_tokens != tokens:
        raise RuntimeError(f"asked for {tokens} tokens, got {session.last_ending.new_tokens}")
    return seconds / tokens


def measure_step(loaded: LoadedModel, plan: Plan, floor: dict, report: Report) -> float:
    encode = Session(loaded, greedy_settings(1)).encode
    context = text_with_tokens(encode, plan.step_context)
    times = []
    korepl_step_seconds(loaded, context, 4)  # warm-up
    for _ in range(plan.repeats + 1):
        times.append(korepl_step_seconds(loaded, context, plan.step_tokens))
    step = min(times)
    report.results["step"] = {
        "context_tokens": plan.step_context, "tokens": plan.step_tokens, "timing": f"best of {len(times)}",
        "korepl_step_s": step, "korepl_tok_s": 1 / step, "floor_as_stored_s": floor["stored_s"],
        "floor_best_layout_s": floor["floor_s"], "overhead_vs_stored_floor": step / floor["stored_s"],
        "overhead_vs_best_floor": step / floor["floor_s"], "times_s": times,
    }
    report.row(f"korepl step at ~{plan.step_context} tokens of context", f"{step * 1e3:.2f} ms/token",
               f"{1 / step:.1f} tok/s")
    report.row("step overhead = korepl step / floor (as stored)", f"{step / floor['stored_s']:.2f}×",
               f"{step / floor['floor_s']:.2f}× the best-layout floor")
    return step


def measure_bandwidth(device: torch.device, plan: Plan, floor: dict, step_s: float, report: Report) -> None:
    count = plan.bandwidth_bytes // 4
    buffer = torch.ones(count, dtype=torch.float32, device=device)
    sum_s, sum_times, _ = best_of(lambda: torch.sum(buffer), 5, device)
    target = torch.empty_like(buffer)
    copy_s, copy_times, _ = best_of(lambda: target.copy_(buffer), 5, device)
    del buffer, target
    read_bw = plan.bandwidth_bytes / sum_s
    copy_bw = 2 * plan.bandwidth_bytes / copy_s  # read + write
    weight_bytes = floor["weight_bytes"]
    achieved = weight_bytes / step_s
    floor_bw = weight_bytes / floor["stored_s"]
    report.results["bandwidth"] = {
        "buffer_bytes": plan.bandwidth_bytes, "timing": "best of 5 after a warm-up",
        "sum_read_bytes_s": read_bw, "copy_read_write_bytes_s": copy_bw,
        "korepl_achieved_bytes_s": achieved, "achieved_share": achieved / read_bw,
        "floor_achieved_bytes_s": floor_bw, "upper_bound_tok_s": read_bw / weight_bytes,
        "sum_times_s": sum_times, "copy_times_s": copy_times,
    }
    report.row(f"memory read bandwidth (torch.sum over {plan.bandwidth_bytes / 2**30:g} GiB fp32)",
               f"{read_bw / 1e9:.1f} GB/s", f"copy: {copy_bw / 1e9:.1f} GB/s read+write")
    report.row("bandwidth achieved by korepl (weight bytes × tok/s)", f"{achieved / 1e9:.1f} GB/s",
               f"{achieved / read_bw:.0%} of measured bandwidth")
    report.row("bandwidth achieved by the floor's products alone", f"{floor_bw / 1e9:.1f} GB/s",
               f"{floor_bw / read_bw:.0%} of measured bandwidth")
    report.row("upper bound tok/s = bandwidth / weight bytes", f"{read_bw / weight_bytes:.1f} tok/s",
               f"korepl reaches {(1 / step_s) / (read_bw / weight_bytes):.0%}")


# --- 3b. each precision path, and CTranslate2 ------------------------------------------------------------


PATH_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def load_path(folder: Path, device: torch.device, path: str) -> LoadedModel:
    if path == "int8":
        return load_model(str(folder), device.type, "float32", "int8")
    return load_model(str(folder), device.type, path)


def path_products(loaded: LoadedModel) -> list[tuple[Callable, torch.Tensor]]:
    """One token's products with this path's own kernels: the lean runner's linear layers and the lm_head."""
    runner = StaticRunner(loaded.model, loaded.device)
    hidden, dtype = loaded.model.config.n_embd, runner.keys.dtype
    x, wide = (torch.randn(1, n, dtype=dtype, device=loaded.device) for n in (hidden, 4 * hidden))
    products = []
    for layer in runner.layers:
        products += [(layer.c_attn, x), (layer.attn_proj, x), (layer.c_fc, x), (layer.c_proj, wide)]
    return products + [(runner.lm_head, x)]


def path_floor_seconds(loaded: LoadedModel, repeats: int) -> float:
    products = path_products(loaded)

    def chain() -> None:
        for product, x in products:
            product(x)

    with torch.inference_mode():
        return best_of(chain, repeats, loaded.device)[0]


def slide_seconds(loaded: LoadedModel, repeats: int) -> tuple[float, float]:
    """(the step that overflows the window and re-prefills the kept part, a plain step near the window's end).

    Best of `repeats` after a warm-up, the two taking turns.
    """
    settings = greedy_settings(1)
    encode = Session(loaded, settings).encode
    full_view, near_full = text_with_tokens(encode, loaded.window), text_with_tokens(encode, loaded.window - 24)
    slide_times, plain_times = [], []
    for repeat in range(repeats + 1):
        sliding, plain = prefilled_session(loaded, full_view, settings), prefilled_session(loaded, near_full, settings)
        slide_s, _ = timed(lambda: [None for _ in sliding.generate()], loaded.device)
        plain_s, _ = timed(lambda: [None for _ in plain.generate()], loaded.device)
        if sliding.slides != 1 or plain.slides != 0:
            raise RuntimeError("the window did not slide exactly once, where it had to")
        if repeat:  # the first round is a warm-up
            slide_times.append(slide_s)
            plain_times.append(plain_s)
    return min(slide_times), min(plain_times)


def measure_paths(folder: Path, fp32: LoadedModel, plan: Plan, report: Report) -> dict:
    """korepl on every precision path: decode speed, the path's own floor, the step over it, a window slide."""
    device = fp32.device
    paths = ("float32", "float16", "bfloat16") + (("int8",) if device.type == "cpu" else ())
    generate = {n: report.results[f"decode_{n}"]["generate_tok_s"] for n in plan.decode_lengths}
    matrix_elements = sum(w.numel() for _, w in weight_matrices(fp32.model))
    context = text_with_tokens(Session(fp32, greedy_settings(1)).encode, plan.step_context)
    results = {}
    for path in paths:
        loaded = fp32 if path == "float32" else load_path(folder, device, path)
        floor = path_floor_seconds(loaded, plan.floor_repeats)
        if path == "float32":  # measured already, beside generate and in the step section
            decode = {n: report.results[f"decode_{n}"]["korepl_tok_s"] for n in plan.decode_lengths}
            step = report.results["step"]["korepl_step_s"]
        else:
            korepl_step_seconds(loaded, context, 4)  # warm-up
            step = min(korepl_step_seconds(loaded, context, plan.step_tokens) for _ in range(plan.repeats + 1))
            decode = {}
            for n in plan.decode_lengths:
                best, _, _ = best_of(lambda: korepl_continue(loaded, PROMPT, n), plan.decode_repeats[n], device)
                decode[n] = n / best
        slide, plain = slide_seconds(loaded, plan.repeats)
        weight_bytes = matrix_elements * PATH_BYTES[path]
        results[path] = {"floor_s": floor, "step_s": step, "step_over_floor": step / floor,
                         "decode_tok_s": decode, "vs_generate_fp32": {n: decode[n] / generate[n] for n in decode},
                         "slide_s": slide, "plain_step_near_window_end_s": plain, "weight_bytes_per_token": weight_bytes,
                         "bandwidth_achieved_bytes_s": weight_bytes / step}
        speeds = ", ".join(f"{decode[n]:.1f} tok/s at {n} ({decode[n] / generate[n]:.2f}× generate fp32)"
                           for n in decode)
        report.row(f"path {path}: decode", speeds)
        report.row(f"path {path}: step at ~{plan.step_context} of context / its own products' floor",
                   f"{step * 1e3:.2f} / {floor * 1e3:.2f} ms = {step / floor:.2f}×",
                   f"bandwidth achieved {weight_bytes / step / 1e9:.1f} GB/s")
        report.row(f"path {path}: window slide (the step that re-prefills {kept_tokens(loaded)})",
                   f"{slide * 1e3:.0f} ms", f"{slide / plain:.1f}× a plain step at {loaded.window - 24}")
        if loaded is not fp32:
            del loaded
    fastest = max(results, key=lambda p: results[p]["decode_tok_s"][plan.decode_lengths[0]])
    auto = precision.measure_products(fp32.model.config.n_embd, fp32.model.config.vocab_size) \
        if device.type == "cpu" else {}
    auto_choice = precision.fastest_not_slower(auto) if auto else "float16"
    report.results["paths"] = {"timing": f"decode best of {plan.decode_repeats}; step best of {plan.repeats + 1}; "
                                         f"floor best of {plan.floor_repeats}", "by_path": results,
                               "fastest": fastest, "auto_products_ms": auto, "auto_would_choose": auto_choice}
    report.row("fastest path here / what --dtype auto would choose", f"{fastest} / {auto_choice}",
               "auto's products: " + ", ".join(f"{p} {t:.1f} ms" for p, t in auto.items()) if auto else "—")
    return results[fastest] | {"path": fastest}


def measure_ctranslate2(folder: Path, loaded: LoadedModel, plan: Plan, fastest: dict, report: Report) -> None:
    """CTranslate2 (an optional `bench` extra) on the same saved model, prompt and settings, fp32 and int8."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        report.notes.append("CTranslate2 is not installed, so its rows are missing: pip install -e '.[bench]'.")
        return
    converted = folder.parent / f"{folder.name}-ctranslate2"
    if not (converted / "model.bin").is_file():
        with contextlib.redirect_stdout(sys.stderr):
            TransformersConverter(str(folder)).convert(str(converted), quantization="float32", force=True)
    prompt_ids = Session(loaded, greedy_settings(1)).encode(PROMPT)
    tokens = loaded.tokenizer.convert_ids_to_tokens(prompt_ids)
    generate = {n: report.results[f"decode_{n}"]["generate_tok_s"] for n in plan.decode_lengths}
    results = {}
    for compute_type in ("float32", "int8"):
        generator = ctranslate2.Generator(str(converted), device=loaded.device.type, compute_type=compute_type,
                                          intra_threads=torch.get_num_threads())
        rates = {}
        for n in plan.decode_lengths:
            def run(n=n):
                return generator.generate_batch([tokens], max_length=n, min_length=n, sampling_topk=1,
                                                 repetition_penalty=2.0, include_prompt_in_result=False)
            best, _, out = best_of(run, plan.decode_repeats[n], loaded.device)
            rates[n] = len(out[0].sequences_ids[0]) / best
        results[compute_type] = rates
        report.row(f"CTranslate2 {ctranslate2.__version__} {compute_type}: decode",
                   ", ".join(f"{rates[n]:.1f} tok/s at {n} ({rates[n] / generate[n]:.2f}× generate fp32)"
                             for n in rates))
        del generator
    n = plan.decode_lengths[0]
    best_ct2 = max(results, key=lambda c: results[c][n])
    ratio = fastest["decode_tok_s"][n] / results[best_ct2][n]
    report.results["ctranslate2"] = {"version": ctranslate2.__version__, "decode_tok_s": results,
                                     "korepl_fastest_path": fastest["path"], "korepl_fastest_vs_best_ct2": ratio,
                                     "note": "its repetition penalty counts differently, so its ids are not "
                                             "generate's; the work per token is the same"}
    report.row(f"korepl's fastest path ({fastest['path']}) / CTranslate2's faster mode ({best_ct2}), {n} tokens",
               f"{ratio:.2f}×")


# --- 4. time to first token ------------------------------------------------------------------------------


def prefilled_session(loaded: LoadedModel, context: str, settings: Settings) -> Session:
    """A session whose text is `context` (a turn of its own, so that it can be saved), already prefilled."""
    session = Session(loaded, settings)
    if context:
        session.add_line(context)
        session.next_logits()
    return session


def korepl_first_token(session: Session, line: str, generator) -> int:
    session.feed(f" {line}" if session.ids else line)
    logits = session.next_logits()
    return sampling.choose(logits, session.penalty_history(), session.settings, generator).token_id


def rerun_first_token(loaded: LoadedModel, ids: list[int], settings: Settings, generator) -> int:
    """A tool without a kept cache: one forward over the whole context and the line (last position's logits)."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    logits = loaded.model(input_ids=input_ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
    history = torch.tensor(ids, dtype=torch.long, device=loaded.device)
    return sampling.choose(logits, history, settings, generator).token_id


def measure_ttft(loaded: LoadedModel, plan: Plan, report: Report) -> None:
    settings = greedy_settings(1)
    encode = Session(loaded, settings).encode
    line = text_with_tokens(encode, plan.line_tokens, LINE_SOURCE)
    results = {}
    for context_tokens in plan.ttft_contexts:
        context = text_with_tokens(encode, context_tokens)
        korepl_times, rerun_times = [], []
        for repeat in range(plan.repeats + 1):  # the first round is a warm-up
            session = prefilled_session(loaded, context, settings)
            generator = sampling.make_generator(0)
            seconds, korepl_pick = timed(lambda: korepl_first_token(session, line, generator), loaded.device)
            ids = list(session.ids)
            rerun_s, rerun_pick = timed(lambda: rerun_first_token(loaded, ids, settings, sampling.make_generator(0)),
                                        loaded.device)
            if repeat:
                korepl_times.append(seconds)
                rerun_times.append(rerun_s)
        k, r = min(korepl_times), min(rerun_times)
        results[context_tokens] = {
            "context_tokens": context_tokens, "line_tokens": len(ids) - context_tokens, "korepl_s": k, "rerun_s": r,
            "rerun_vs_korepl": r / k, "same_first_token": korepl_pick == rerun_pick,
            "korepl_times_s": korepl_times, "rerun_times_s": rerun_times,
        }
        report.row(f"time to first token, {len(ids) - context_tokens}-token line after {context_tokens} cached",
                   f"{k * 1e3:.1f} ms", f"re-run {r * 1e3:.1f} ms = {r / k:.1f}× korepl")
    last = plan.ttft_contexts[-1]
    growth = results[last]["korepl_s"] / results[plan.ttft_contexts[0]]["korepl_s"]
    report.results["ttft"] = {"timing": f"best of {plan.repeats} after a warm-up",
                              "by_context": {str(k): v for k, v in results.items()},
                              f"korepl_ttft_{last}_over_ttft_0": growth}
    report.row(f"korepl TTFT({last}) / TTFT(0)", f"{growth:.2f}×")


# --- 5. the window slide and loading a session -----------------------------------------------------------------


def kept_tokens(loaded: LoadedModel) -> int:
    """How many tokens a window slide keeps (and re-prefills) under the benchmark's settings."""
    return int(loaded.window * greedy_settings(1).window_keep)


def measure_slide_and_load(loaded: LoadedModel, plan: Plan, report: Report) -> None:
    settings = greedy_settings(1)
    encode = Session(loaded, settings).encode
    fp32 = report.results["paths"]["by_path"]["float32"]  # the paths section timed the float32 slide
    slide, step = fp32["slide_s"], fp32["plain_step_near_window_end_s"]
    report.results["window_slide"] = {
        "timing": f"best of {plan.repeats} after a warm-up, slide and plain step taking turns",
        "view_tokens_before": loaded.window, "kept_tokens": kept_tokens(loaded), "slide_step_s": slide,
        "plain_step_s": step, "slide_vs_plain_step": slide / step,
    }
    report.row(f"window slide: the step after {loaded.window} tokens (re-prefills {kept_tokens(loaded)})",
               f"{slide * 1e3:.1f} ms", f"{slide / step:.1f}× a plain step at {loaded.window - 24} ({step * 1e3:.1f} ms)")

    context = text_with_tokens(encode, plan.memory_context)
    with tempfile.TemporaryDirectory(prefix="korepl-bench-") as folder:
        path = Path(folder) / "session.json"
        store.save(prefilled_session(loaded, context, settings), path)

        def restore(session: Session) -> Session:
            store.restore(session, store.read_file(path), str(path))
            session.next_logits()
            return session

        def fresh(session: Session) -> Session:
            session.add_line(context)
            session.next_logits()
            return session

        def new_session() -> Session:  # made untimed: /load and a typed text both land in a running session
            return Session(loaded, settings)

        runs = interleaved({"load": (new_session, restore), "fresh": (new_session, fresh)}, plan.repeats,
                           loaded.device)
        (load_s, load_times, restored), (fresh_s, fresh_times, _) = runs["load"], runs["fresh"]
        size = path.stat().st_size
    report.results["session_load"] = {
        "timing": f"best of {plan.repeats}, taking turns, after a warm-up", "context_tokens": len(restored.ids),
        "file_bytes": size, "restore_and_prefill_s": load_s, "fresh_feed_and_prefill_s": fresh_s,
        "load_vs_fresh": load_s / fresh_s, "load_times_s": load_times, "fresh_times_s": fresh_times,
    }
    report.row(f"load a {len(restored.ids)}-token session (read + restore + prefill)", f"{load_s * 1e3:.1f} ms",
               f"{load_s / fresh_s:.2f}× feeding the text afresh ({fresh_s * 1e3:.1f} ms)")


# --- 6 and 7. memory and startup, in fresh processes ----------------------------------------------------


def peak_rss() -> tuple[int, str]:
    """Peak resident bytes of this process, and where the number came from.

    Linux's ru_maxrss survives exec, so a child started by a big parent reports the parent's peak;
    /proc/self/status's VmHWM belongs to this program's own address space, so it is preferred.
    """
    with contextlib.suppress(OSError, ValueError):
        for text_line in Path("/proc/self/status").read_text().splitlines():
            if text_line.startswith("VmHWM:"):
                return int(text_line.split()[1]) * 1024, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"  # KiB on Linux


def memory_child(folder: str, device: str, context_tokens: int, new_tokens: int) -> None:
    """Run in a fresh process: load, write `new_tokens` after a prefilled context, print the peaks as JSON."""
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (the model's code: part of the runtime, not of korepl)

    imports, source = peak_rss()
    loaded = load_model(folder, device)
    ready = time.time()  # the parent subtracts its launch time: launch to model ready
    after_load, _ = peak_rss()
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    weights += sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    session = Session(loaded, greedy_settings(new_tokens))
    session.feed(text_with_tokens(session.encode, context_tokens))
    session.next_logits()
    after_prefill, _ = peak_rss()
    for _ in session.generate():
        pass
    cuda_peak = torch.cuda.max_memory_allocated() if loaded.device.type == "cuda" else None
    peak, _ = peak_rss()
    print(json.dumps({"imports_rss": imports, "after_load_rss": after_load, "after_prefill_rss": after_prefill,
                      "peak_rss": peak, "rss_source": source,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "weights_bytes": weights, "context_tokens": len(session.ids), "cuda_peak_allocated": cuda_peak,
                      "ready_at": ready}))


def child_env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_python(code: str, threads: int | None) -> tuple[float, float, str]:
    """(wall seconds, launch time as time.time(), stdout) of `python -c code` in a fresh process."""
    launched, start = time.time(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(threads), capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"child python failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, launched, done.stdout


def measure_memory(folder: Path, device: torch.device, plan: Plan, threads: int | None, report: Report) -> float:
    """Peak memory of a fresh process that loads and writes; returns its launch-to-model-ready seconds."""
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(BENCH_DIR)!r}]; import bench; "
            f"bench.memory_child({str(folder)!r}, {device.type!r}, {plan.memory_context}, {plan.memory_new_tokens})")
    _, launched, out = run_python(code, threads)
    child = json.loads(out.strip().splitlines()[-1])
    peak, weights = child["peak_rss"], child["weights_bytes"]
    own_peak, _ = peak_rss()
    report.results["memory"] = dict(child, peak_minus_weights=peak - weights, bench_process_peak_rss=own_peak,
                                    what=f"a fresh process: load, then {plan.memory_new_tokens} tokens after "
                                         f"{plan.memory_context} of context; peak from {child['rss_source']}")
    report.row(f"peak RSS: load + {plan.memory_new_tokens} tokens after {plan.memory_context} of context",
               f"{peak / 2**20:.0f} MiB", f"weights {weights / 2**20:.0f} MiB; peak − weights "
                                          f"{(peak - weights) / 2**20:.0f} MiB")
    report.row("peak RSS after imports only (python, torch, transformers and its GPT-2 code, korepl)",
               f"{child['imports_rss'] / 2**20:.0f} MiB",
               f"peak − weights − imports {(peak - weights - child['imports_rss']) / 2**20:.0f} MiB")
    report.row("peak RSS after load / after the context's prefill",
               f"{child['after_load_rss'] / 2**20:.0f} / {child['after_prefill_rss'] / 2**20:.0f} MiB")
    if child["cuda_peak_allocated"] is not None:
        report.row("CUDA peak allocated", f"{child['cuda_peak_allocated'] / 2**20:.0f} MiB")
    return child["ready_at"] - launched


def measure_startup(folder: Path, device: torch.device, plan: Plan, threads: int | None, report: Report,
                    ready_s: float) -> None:
    """Wall time of fresh `python -c` runs; launch to model ready also counts the memory process's load."""
    programs = {
        "python_bare": "pass",
        "import_cli": "import korepl.cli",
        "import_cli_and_repl": "import korepl.cli, korepl.repl",
        "load_model": f"from korepl.loading import load_model; load_model({str(folder)!r}, {device.type!r})",
    }
    results = {}
    for key, code in programs.items():
        runs = plan.startup_repeats - (key == "load_model")  # the memory process was one load already
        results[key] = min([run_python(code, threads)[0] for _ in range(runs)]
                           + ([ready_s] if key == "load_model" else []))
    report.results["startup"] = {"timing": f"best of {plan.startup_repeats}, wall time of a fresh python -c",
                                 **{f"{k}_s": v for k, v in results.items()}}
    bare = results["python_bare"]
    report.row("startup: python -c pass", f"{bare * 1e3:.0f} ms", "baseline")
    report.row("startup: python -c 'import korepl.cli'", f"{results['import_cli'] * 1e3:.0f} ms",
               f"+{(results['import_cli'] - bare) * 1e3:.0f} ms over bare python")
    report.row("startup: import korepl.cli and korepl.repl (what runs before the prompt shows)",
               f"{results['import_cli_and_repl'] * 1e3:.0f} ms", f"+{(results['import_cli_and_repl'] - bare) * 1e3:.0f} ms")
    report.row("startup: launch to model ready (load_model of this run's folder)",
               f"{results['load_model'] * 1e3:.0f} ms", f"+{(results['load_model'] - bare) * 1e3:.0f} ms")


# --- the profile of one decode step -------------------------------------------------------------------------------


def measure_profile(loaded: LoadedModel, plan: Plan, report: Report, top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    encode = Session(loaded, greedy_settings(1)).encode
    context = text_with_tokens(encode, plan.step_context)
    steps = plan.profile_steps
    korepl_step_seconds(loaded, context, steps)  # warm-up
    session = prefilled_session(loaded, context, greedy_settings(steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loaded.device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in session.generate():
            pass
    wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_self = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "self_cpu_us_per_step": e.self_cpu_time_total / steps, "calls_per_step": e.count / steps,
             "share_of_op_time": e.self_cpu_time_total / total_self} for e in events[:top]]
    report.results["profile"] = {
        "context_tokens": plan.step_context, "steps": steps, "wall_s_per_step_under_profiler": wall / steps,
        "ops_self_cpu_s_per_step": total_self / 1e6 / steps, "top_ops_by_self_cpu": rows,
    }
    return rows


# --- machine facts and output ------------------------------------------------------------------------------------------


def machine_facts(device: torch.device) -> dict:
    model_name, flags = None, set()
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = text_line.partition(":")
            if key.strip() == "model name" and model_name is None:
                model_name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    model_name = model_name or platform.processor() or "unknown"
    facts = {
        "cpu": model_name,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cuda_used": device.type == "cuda",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_at_start": list(os.getloadavg()),
    }
    return facts


def print_facts(facts: dict) -> None:
    present = [f for f, has in facts["cpu_flags"].items() if has]
    absent = [f for f, has in facts["cpu_flags"].items() if not has]
    print(f"CPU: {facts['cpu']}; {facts['cpu_count']} cores; torch threads {facts['torch_threads']} "
          f"(kernels: {facts['torch_cpu_capability']})")
    print(f"CPU flags present: {' '.join(present) or 'none'}; absent: {' '.join(absent) or 'none'}")
    print(f"torch {facts['torch']}, transformers {facts['transformers']}, python {facts['python']}, "
          f"{facts['platform']}")
    print(f"date {facts['date']}; CUDA used: {facts['cuda_used']}" + (f" ({facts['gpu']})" if facts["gpu"] else ""))
    print(f"load average at start {facts['load_average_at_start']}, at end {facts['load_average_at_end']} "
          f"(other work on these cores adds noise)")


def print_table(rows: list[tuple[str, str, str]]) -> None:
    print("| measurement | value | vs baseline |")
    print("|---|---|---|")
    for measurement, value, versus in rows:
        print(f"| {measurement} | {value} | {versus} |")


def print_profile(rows: list[dict], profile_result: dict) -> None:
    print(f"\nProfile of one korepl decode step at ~{profile_result['context_tokens']} tokens of context "
          f"(torch.profiler, {profile_result['steps']} steps averaged; wall under the profiler "
          f"{profile_result['wall_s_per_step_under_profiler'] * 1e3:.2f} ms/step, "
          f"ops' self time {profile_result['ops_self_cpu_s_per_step'] * 1e3:.2f} ms/step):")
    print("| op | self CPU µs/step | calls/step | share of op time |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['op']} | {row['self_cpu_us_per_step']:.0f} | {row['calls_per_step']:.1f} | "
              f"{row['share_of_op_time']:.1%} |")


# --- main --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens (a smoke test, < 1 min)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json", help="JSON output file")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the benchmark model is built once and reused (default under the temp folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.simplefilter("ignore")
    transformers.utils.logging.set_verbosity_error()
    started = time.perf_counter()
    default_dir = Path(tempfile.gettempdir()) / "korepl-bench" / ("kogpt2-shaped" + ("-quick" if args.quick else ""))
    folder = ensure_model((args.model_dir or default_dir).expanduser().resolve(), plan)
    try:
        loaded = load_model(str(folder), args.device)
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    device = loaded.device
    facts = machine_facts(device)
    report = Report()
    print(f"korepl benchmark ({plan.name}): {plan.n_layer} layers, {plan.n_embd} wide, vocabulary {KOGPT2_VOCAB}, "
          f"window {loaded.window}; model folder {folder}", file=sys.stderr, flush=True)

    sections = report.results.setdefault("section_seconds", {})
    loads = report.results.setdefault("load_average_after_section", {})

    def section(name: str, fn: Callable[[], object]):
        start = time.perf_counter()
        result = fn()
        sections[name] = time.perf_counter() - start
        loads[name] = os.getloadavg()[0]
        print(f"[{name}: {sections[name]:.1f} s, load average {loads[name]:.2f}]", file=sys.stderr, flush=True)
        return result

    section("decoding", lambda: measure_decoding(loaded, plan, report))
    floor = section("floor", lambda: measure_floor(loaded, plan, report))
    step_s = section("step", lambda: measure_step(loaded, plan, floor, report))
    section("bandwidth", lambda: measure_bandwidth(device, plan, floor, step_s, report))
    fastest = section("paths", lambda: measure_paths(folder, loaded, plan, report))
    section("ctranslate2", lambda: measure_ctranslate2(folder, loaded, plan, fastest, report))
    section("ttft", lambda: measure_ttft(loaded, plan, report))
    section("slide_and_load", lambda: measure_slide_and_load(loaded, plan, report))
    profile_rows = section("profile", lambda: measure_profile(loaded, plan, report))
    ready_s = section("memory", lambda: measure_memory(folder, device, plan, args.threads, report))
    section("startup", lambda: measure_startup(folder, device, plan, args.threads, report, ready_s))

    facts["load_average_at_end"] = list(os.getloadavg())
    elapsed = time.perf_counter() - started
    report.notes += [
        "Timings are the best of the repeats given in each result's 'timing' (after a warm-up); none is asserted.",
        "korepl's decode time includes its prompt prefill and one extra forward step at the end (it runs the last "
        "token so that undo needs no model run); generate's includes its prefill.",
        "The re-run baseline for time to first token computes only the last position's logits (logits_to_keep=1).",
        f"The benchmark tokenizer is the demo model's BPE with its vocabulary padded to KoGPT2's {KOGPT2_VOCAB:,} "
        "by plain entries.",
    ]
    print(f"\nkorepl benchmark ({plan.name}), model {plan.n_layer} layers × {plan.n_embd} wide, fp32, "
          f"{device.type}; {elapsed:.0f} s in all")
    print_facts(facts)
    print()
    print_table(report.rows)
    print_profile(profile_rows, report.results["profile"])
    print("\nNotes: " + " ".join(report.notes))

    out = {
        "benchmark": "korepl", "plan": dataclasses.asdict(plan), "machine": facts,
        "model": {"folder": str(folder), **model_spec(plan), "dtype": "float32", "window": loaded.window},
        "elapsed_s": elapsed, "results": report.results,
        "table": [{"measurement": m, "value": v, "vs_baseline": b} for m, v, b in report.rows],
        "notes": report.notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, ensure_ascii=False, indent=1, default=str))
    print(f"\nJSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
