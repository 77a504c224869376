"""Shared fixtures: real models and tokenizers that the project builds (no hub, no mocks).

- `demo`: the shipped demo model (korepl/demo_model), loaded through the real loading code.
- `kogpt2_shaped`: random weights with KoGPT2's vocabulary, width, heads and window (two layers for
  speed), saved with save_pretrained and loaded back as a folder.  Its tokenizer is the demo's,
  padded with filler tokens to KoGPT2's 51,200 so every id the model can produce decodes.
"""

from __future__ import annotations

import dataclasses
import os

import hypothesis
import pytest
import torch

from korepl.loading import DEMO_MODEL_DIR, load_model, load_tokenizer
from korepl.session import Session
from korepl.settings import load_defaults

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may wait on a hub
torch.set_num_threads(2)
# Two shared cores: a first call that loads code can take a while; timing is the benchmarks' job.
hypothesis.settings.register_profile("korepl", deadline=None)
hypothesis.settings.load_profile("korepl")

KOGPT2_VOCAB = 51_200


@pytest.fixture(scope="session")
def defaults():
    return load_defaults().decoding


@pytest.fixture(scope="session")
def demo():
    return load_model(str(DEMO_MODEL_DIR), "cpu")


@pytest.fixture(scope="session")
def kogpt2_shaped(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("kogpt2_shaped")
    tokenizer = load_tokenizer(str(DEMO_MODEL_DIR))
    tokenizer.add_tokens([f"<filler{i}>" for i in range(KOGPT2_VOCAB - len(tokenizer))])
    assert len(tokenizer) == KOGPT2_VOCAB
    torch.manual_seed(1234)
    config = GPT2Config(vocab_size=KOGPT2_VOCAB, n_positions=1024, n_embd=768, n_layer=2, n_head=12,
                        activation_function="gelu_new", bos_token_id=1, eos_token_id=1, pad_token_id=3)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), "cpu")


@pytest.fixture(scope="session")
def new_session(defaults):
    """new_session(loaded, **settings changes) -> a fresh Session."""

    def make(loaded, **changes):
        return Session(loaded, dataclasses.replace(defaults, **changes))

    return make


def hf_reference(loaded, prompt: str, max_new_tokens: int, stops: tuple[str, ...] = (), **kwargs) -> list[int]:
    """Hugging Face `generate`'s greedy new ids for `prompt`, up to (not including) the first stop token.

    The reference every equivalence test compares with.  korepl never writes a special token that is
    not a stop, so neither may the reference (HF `suppress_tokens` semantics).
    """
    tokenizer = loaded.tokenizer
    stop_ids = [tokenizer.convert_tokens_to_ids(s) for s in stops]
    specials = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    ids = tokenizer.encode(prompt)
    out = loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=max_new_tokens, use_cache=True,
                                eos_token_id=stop_ids or None, pad_token_id=tokenizer.pad_token_id,
                                suppress_tokens=sorted(specials - set(stop_ids)), **kwargs)[0, len(ids):].tolist()
    return out[: next((i for i, t in enumerate(out) if t in stop_ids), len(out))]


@pytest.fixture(scope="session")
def hf_greedy():
    return hf_reference
