"""The things both the benchmark and the tests build: the KoGPT2-shaped model, texts, the generate reference.

- `build_kogpt2_shaped`: random weights in KoGPT2's shape (51,200-token vocabulary, 1024 positions,
  any depth and width), saved with save_pretrained.  Its tokenizer is the demo model's BPE with the
  vocabulary padded by plain entries to 51,200, as KoGPT2's own vocabulary is plain: padding with
  added tokens instead costs ~110 MB of memory and seconds of loading that KoGPT2 does not.
- `text_with_tokens`: a text of whole words that encodes to exactly N tokens.
- `hf_reference`: Hugging Face `generate`'s greedy ids, the reference korepl's ids are compared with.
- `drain`: run a continuation to its end.

tests/conftest.py imports these; nothing here imports pytest or the benchmark's harness.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterable, Sequence
from itertools import cycle
from pathlib import Path

import torch

from korepl.loading import DEMO_MODEL_DIR, KOGPT2_SPECIAL_TOKENS, LoadedModel, load_tokenizer

KOGPT2_VOCAB = 51_200
KOGPT2_POSITIONS = 1024
# Plain Korean prose for building contexts of an exact token count (speed does not depend on the words).
CORPUS = (
    "수강신청에서 원하는 강의를 신청하기 위해서는 먼저 학교 홈페이지에 접속하여 학번과 비밀번호로 로그인해야 한다. "
    "신청 기간이 시작되기 전에 시간표를 미리 짜 두면 인기 있는 과목도 놓치지 않을 수 있다. "
    "도서관은 아침 일곱 시에 문을 열고 밤 열한 시에 닫으며, 시험 기간에는 하루 종일 열려 있다. "
    "봄이 오면 캠퍼스의 벚꽃길을 따라 산책하는 학생들이 많아지고, 작은 음악회가 열리기도 한다. "
    "글을 쓸 때에는 하고 싶은 말을 한 문장으로 먼저 정리한 다음, 그 문장을 뒷받침하는 근거를 차례대로 적어 나가는 것이 좋다. "
    "어제 내린 비로 강물이 불어나서 다리 아래의 산책로는 당분간 이용할 수 없다고 한다. "
)
PAD_WORDS = ("수", "것", "그", "더", "잘", "및", "또", "이")


def kogpt2_config(n_layer: int, n_embd: int, n_head: int) -> dict:
    """GPT2Config's arguments for KoGPT2's shape at the given depth and width (KoGPT2: 12, 768, 12)."""
    return {"vocab_size": KOGPT2_VOCAB, "n_positions": KOGPT2_POSITIONS, "n_embd": n_embd, "n_layer": n_layer,
            "n_head": n_head, "activation_function": "gelu_new", "bos_token_id": 1, "eos_token_id": 1,
            "pad_token_id": 3}


def padded_tokenizer(size: int = KOGPT2_VOCAB):
    """The demo tokenizer with its BPE vocabulary padded to `size` by plain entries `<filler{id}>`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(load_tokenizer(str(DEMO_MODEL_DIR)).backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<filler{i}>": i for i in range(max(vocab.values()) + 1, size)})
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), **KOGPT2_SPECIAL_TOKENS)


def build_kogpt2_shaped(folder: Path, *, n_layer: int, n_embd: int, n_head: int, seed: int) -> Path:
    """Save a random-weight KoGPT2-shaped model and its padded tokenizer into `folder`; returns `folder`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**kogpt2_config(n_layer, n_embd, n_head))).save_pretrained(folder)
    padded_tokenizer(KOGPT2_VOCAB).save_pretrained(folder)
    return folder


def text_with_tokens(encode, count: int, source: str = CORPUS) -> str:
    """A text of whole words that `encode` turns into exactly `count` tokens (prose, padded with one-token words)."""
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


def hf_reference(loaded: LoadedModel, prompt: str | Sequence[int], max_new_tokens: int, stops: tuple[str, ...] = (),
                 **generate_kwargs) -> list[int]:
    """Hugging Face `generate`'s greedy new ids after `prompt` (a text or its ids), up to the first stop token.

    korepl never writes a special token that is not a stop, so neither may the reference (HF
    `suppress_tokens`).  The suppressed set is worked out here from the tokenizer, not taken from korepl.
    """
    tokenizer = loaded.tokenizer
    stop_ids = [tokenizer.convert_tokens_to_ids(s) for s in stops]
    specials = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    out = loaded.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=stop_ids or None,
                                pad_token_id=tokenizer.pad_token_id, suppress_tokens=sorted(specials - set(stop_ids)),
                                **generate_kwargs)[0, len(ids):].tolist()
    return out[: next((i for i, t in enumerate(out) if t in stop_ids), len(out))]


def drain(source) -> str:
    """Run a continuation to its end (a session's next one, or steps already started); the text it showed."""
    steps: Iterable = source.generate() if hasattr(source, "generate") else source
    return "".join(step.text for step in steps)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a llama-server the tests or the benchmark start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """End a server started for a test or the benchmark: politely, then (after 10 s) for sure."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
