"""Loading: folders and hub ids go through one function; KoGPT2's special tokens; friendly failures."""

from __future__ import annotations

import json

import pytest
import torch

from korepl.loading import DEMO_MODEL_DIR, ModelUnavailable, load_model, resolve_device

KOGPT2_IDS = {"<s>": 0, "</s>": 1, "<usr>": 2, "<pad>": 3, "<sys>": 4, "<unk>": 5, "<mask>": 6, "<d>": 7, "</d>": 8}


@pytest.mark.parametrize("fixture", ["demo", "kogpt2_shaped"])
def test_kogpt2_special_tokens(request, fixture):
    tokenizer = request.getfixturevalue(fixture).tokenizer
    vocab = tokenizer.get_vocab()
    assert {token: vocab[token] for token in KOGPT2_IDS} == KOGPT2_IDS
    assert vocab["<unused0>"] == 9 and vocab["<unused99>"] == 108
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("</s>", "</s>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 1, 3)
    assert (tokenizer.unk_token_id, tokenizer.mask_token_id) == (5, 6)
    assert tokenizer.tokenize("수강신청에서 원하는 강의를")[0].startswith("▁")


def test_kogpt2_shape(kogpt2_shaped):
    """What loading the fixture's folder gives back: KoGPT2's weight shapes and window, and a vocabulary that is
    plain BPE beyond its 109 special entries (as KoGPT2's is), every id the model can write decoding."""
    model, tokenizer = kogpt2_shaped.model, kogpt2_shaped.tokenizer
    assert tuple(model.transformer.wte.weight.shape) == (51_200, 768)
    assert tuple(model.transformer.wpe.weight.shape) == (1024, 768)
    assert kogpt2_shaped.window == 1024
    assert len(tokenizer) == model.config.vocab_size == model.get_output_embeddings().weight.numel() // 768
    assert tokenizer.convert_ids_to_tokens(51_199) == "<filler51199>"
    assert set(tokenizer.get_added_vocab()) == set(KOGPT2_IDS) | {f"<unused{i}>" for i in range(100)}


def test_loaded_for_inference(demo):
    assert not demo.model.training
    assert not any(p.requires_grad for p in demo.model.parameters())
    assert demo.device == torch.device("cpu")
    assert next(demo.model.parameters()).dtype == torch.float32


def test_auto_device_without_cuda_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"


def test_auto_device_with_cuda_is_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA here")
    assert resolve_device("auto").type == "cuda"


def test_cuda_asked_for_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelUnavailable, match="no usable CUDA"):
        resolve_device("cuda")


def test_folder_with_weights_but_no_tokenizer(tmp_path, demo):
    demo.model.save_pretrained(tmp_path)
    with pytest.raises(ModelUnavailable) as caught:
        load_model(str(tmp_path), "cpu")
    assert "the folder has no tokenizer.json" in str(caught.value) and "--demo" in str(caught.value)


def test_demo_model_metadata_is_honest(demo):
    meta = json.loads((DEMO_MODEL_DIR / "training.json").read_text(encoding="utf-8"))
    assert meta["parameters"] == sum(p.numel() for p in demo.model.parameters())
    assert meta["vocab_size"] == len(demo.tokenizer) and meta["heldout"]["perplexity"] > 1
    size = sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir())
    assert size < 8 * 2**20


def test_demo_continuations_read_as_korean(demo, new_session):
    session = new_session(demo, greedy=True, max_new_tokens=40)
    session.feed("대한민국의 모든 국민은")
    text = "".join(step.text for step in session.generate())
    letters = [c for c in text if c.isalpha()]
    hangul = [c for c in letters if "\uac00" <= c <= "\ud7a3"]
    assert len(letters) >= 15 and len(hangul) / len(letters) > 0.8
