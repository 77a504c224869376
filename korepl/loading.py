"""Hub id or folder -> a causal LM and its tokenizer on a device, with KoGPT2's special tokens.

KoGPT2's own facts live here: its tokenizer is a plain `tokenizer.json` whose special tokens must be
named when it is loaded (bos and eos are both `</s>`, on purpose).  Any other causal LM whose folder
describes its own tokenizer loads through the same function.  Weights load from safetensors when the
source has them; `trust_remote_code` stays off.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from korepl.errors import UserError

if TYPE_CHECKING:  # torch loads with the model, in the background, so the REPL's prompt shows at once
    import torch

DEFAULT_MODEL = "skt/kogpt2-base-v2"
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"

# The first 109 entries of KoGPT2's vocabulary, at these ids; the demo model's tokenizer has them at the same ids
# (scripts/build_demo_model.py builds it from this table).
KOGPT2_TOKEN_IDS = {
    "<s>": 0, "</s>": 1, "<usr>": 2, "<pad>": 3, "<sys>": 4, "<unk>": 5, "<mask>": 6, "<d>": 7, "</d>": 8,
    **{f"<unused{i}>": 9 + i for i in range(100)},
}

# How KoGPT2's documentation loads its tokenizer (ids in KOGPT2_TOKEN_IDS; bos and eos are both </s>).
KOGPT2_SPECIAL_TOKENS = {
    "bos_token": "</s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


class ModelUnavailable(UserError):
    """The model or its tokenizer cannot be had; the message is one paragraph for the user."""


@dataclass
class LoadedModel:
    name: str  # what the user asked for: a hub id or a folder
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerFast
    device: torch.device
    precision: str = "float32"  # float32, float16, bfloat16 or int8
    precision_note: str = "asked for"  # why: asked for, or what `auto` measured
    layout: str = "in_out"  # GPT-2's products: "in_out" (Conv1D, addmm), "out_in" (nn.Linear), or each shape's
    layout_note: str = "the model's own"  # why: what precision.fast_layouts measured
    attention: str = ""  # GPT-2's cache and attention precision where not the weights' ("" = theirs)
    attention_note: str = "the weights' own"  # why: what precision.fast_attention measured
    prefill: str = ""  # the precision of a prefill's products where not the weights' ("" = theirs)
    prefill_note: str = "the weights' own"  # why: what precision.fast_prefill measured
    parameters: int = 0  # counted before int8 packs the weights away from .parameters()
    load_seconds: float = 0.0
    remote: object = None  # a korepl.remote.Remote when a serving engine runs the model (korepl.backend)
    window_size: int | None = None  # set for a remote model: what the server and the tokenizer allow
    compiled: object = None  # a korepl.compiled.CompiledStep when the REPL compiles the step (config `compile`)

    @property
    def window(self) -> int:
        """How many positions the model can see at once."""
        if self.window_size is not None:
            return self.window_size
        return int(positions(self.model.config))


    @property
    def ops(self):
        """The runner.OpPrecision of GPT-2's step: which ops run in another precision than the weights'."""
        import torch

        from korepl.runner import OpPrecision

        return OpPrecision(attention=getattr(torch, self.attention) if self.attention else None,
                           prefill=getattr(torch, self.prefill) if self.prefill else None)

    @property
    def where(self) -> str:
        """Where the model runs, as /settings and /show info say it: cpu, cuda, or remote."""
        return "remote" if self.remote is not None else str(self.device)


def positions(config) -> int | None:
    """The positions a model's config says it can see at once (GPT-2 calls them n_positions), if it says."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def resolve_device(choice: str) -> torch.device:
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda was asked for, but this machine has no usable CUDA GPU. "
                               "Use --device cpu (or auto).")
    return torch.device(choice)


def load_model(source: str, device: str = "auto", dtype: str = "float32", quantize: str = "none") -> LoadedModel:
    """Load `source` (hub id or folder) for inference; ModelUnavailable carries the user's paragraph.

    The weights load as float32 and are then put on the precision asked for (see korepl.precision).
    """
    from korepl import paths, precision

    started = time.perf_counter()
    default_threads()  # torch's own choice, seen before korepl changes it
    target = resolve_device(device)
    local = check_source(source)
    where = str(local) if local.is_dir() else source
    try:
        with _quiet_transformers(progress=not local.is_dir()):
            try:
                tokenizer, model = _load(where, local_files_only=True)
            except (OSError, ValueError):  # not in the local cache (transformers says either)
                if local.is_dir():
                    raise
                _check_hub(source)  # fail at once when the hub cannot help, instead of retrying for minutes
                tokenizer, model = _load(where, local_files_only=False)
    except ModelUnavailable:
        raise
    except Exception as exc:  # whatever went wrong, the user gets one paragraph, not a traceback
        raise ModelUnavailable(_paragraph(source, _first_line(exc))) from exc
    config = model.config
    try:
        chosen, why = precision.resolve(dtype, quantize, target.type, config.hidden_size, config.vocab_size,
                                      paths.state_dir() / "precision.json",
                                      layers=getattr(config, "num_hidden_layers", None) or 12,
                                      heads=getattr(config, "num_attention_heads", None),
                                      positions=positions(config) or 1024)
    except ValueError as exc:
        raise ModelUnavailable(f"korepl: {exc}") from None
    model.eval()
    model.requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    if chosen != "float32":
        precision.apply(model, chosen)
    model.to(target)
    layout, layout_note, attention, attention_note = "in_out", "the model's own", "", "the weights' own"
    prefill, prefill_note = "", "the weights' own"
    if chosen == "int8" or _has_conv1d(model):
        layouts, layout_note = precision.fast_layouts(chosen, target, precision.matrix_shapes(model),
                                                      paths.state_dir() / "precision.json")
        if chosen != "int8":  # int8's layers are all nn.Linear already
            precision.arrange(model, layouts)
        layout = "out_in" if chosen == "int8" else precision.layout_summary(layouts)
        attention, attention_note = precision.fast_attention(
            chosen, target, config.n_head, config.n_embd // config.n_head, paths.state_dir() / "precision.json")
        prefill, prefill_note = precision.fast_prefill(chosen, target, config.n_embd,
                                                      layouts.get((config.n_embd, 4 * config.n_embd), "out_in"),
                                                      paths.state_dir() / "precision.json")
    name = str(local.resolve()) if local.is_dir() else source  # a folder by its full path: saved sessions find it
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, device=target, precision=chosen,
                       precision_note=why, parameters=parameters, load_seconds=time.perf_counter() - started,
                       layout=layout, layout_note=layout_note, attention=attention, attention_note=attention_note,
                       prefill=prefill, prefill_note=prefill_note)


def _has_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for module in model.modules())


def check_source(source: str) -> Path:
    """The checks that need no loading (a folder that is missing or lacks files); the source as a path."""
    try:
        local = Path(source).expanduser()
        is_dir = local.is_dir()
    except (RuntimeError, OSError, ValueError) as exc:  # ~nobody, a name too long: typed, so said, not raised
        reason = f"it is not a folder that can be read ({_first_line(exc)})"
        raise ModelUnavailable(_paragraph(source, reason)) from None
    if _looks_like_path(source) and not is_dir:
        raise ModelUnavailable(_paragraph(source, f"the folder {local} does not exist"))
    if is_dir:
        _check_folder(local)
    return local


@functools.cache
def default_threads() -> int:
    """The threads torch chose for this machine, captured once, before korepl first changes them."""
    import torch

    return torch.get_num_threads()


def apply_threads(threads: int) -> None:
    """Run the model on `threads` CPU threads (0: torch's default for this machine); process-wide."""
    import torch

    default = default_threads()  # seen before the first change, whatever is asked for
    wanted = threads or default
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _load(where: str, local_files_only: bool):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(where, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(
        where, dtype=torch.float32, trust_remote_code=False, local_files_only=local_files_only
    )
    return tokenizer, model


def _check_folder(folder: Path) -> None:
    missing = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if missing:
        raise ModelUnavailable(_paragraph(str(folder), f"the folder has no {' and no '.join(missing)}"))


def _check_hub(model_id: str) -> None:
    """One quick question to the hub: does this model exist, and can we reach it?"""
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(model_id, timeout=10)
    except RepositoryNotFoundError:
        raise ModelUnavailable(_paragraph(model_id, "the hub has no model of that name (or it is private)")) from None
    except OfflineModeIsEnabled:
        raise ModelUnavailable(_paragraph(
            model_id, "it is not in the local cache, and HF_HUB_OFFLINE forbids downloading it")) from None
    except Exception as exc:
        raise ModelUnavailable(_paragraph(
            model_id, f"it is not in the local cache, and the hub cannot be reached ({_first_line(exc)})")) from None


def load_tokenizer(source: str, local_files_only: bool = False):
    """A fast tokenizer; KoGPT2-kind vocabularies get KoGPT2's special tokens by name."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(source, local_files_only=local_files_only)
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in KOGPT2_SPECIAL_TOKENS.values()):
        tokenizer.add_special_tokens(dict(KOGPT2_SPECIAL_TOKENS))
    return tokenizer


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a folder."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _paragraph(source: str, reason: str) -> str:
    return (
        f"korepl could not load the model '{source}': {reason}. "
        "Ways out: connect to the network so the model can be downloaded from the Hugging Face hub once "
        "(it is then kept in the local cache, ~/.cache/huggingface, and later runs work offline); "
        "copy an already downloaded cache there or set HF_HOME to one; "
        "point --model at a folder saved with save_pretrained (config.json, weights and tokenizer.json); "
        "or try korepl --demo, which runs on a small Korean model shipped with korepl."
    )


class _quiet_transformers:
    """Keep transformers' advisory warnings off the screen while loading; progress bars only for downloads."""

    def __init__(self, progress: bool):
        self._progress = progress

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        if not self._progress:
            hf_logging.disable_progress_bar()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc_info):
        from transformers.utils import logging as hf_logging

        self._warnings.__exit__(*exc_info)
        hf_logging.set_verbosity(self._level)
        hf_logging.enable_progress_bar()
        return False
