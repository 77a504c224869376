"""A serving engine as the model (`--backend URL`): the tokenizer here, the forward passes there.

`load_remote` loads only the tokenizer (and the small config.json, when there is one) from `--model`,
probes the server (korepl.remote) and returns a LoadedModel whose `remote` is the probed engine and
whose window is what both the server and the tokenizer allow.  The session stays the one session:
its context sends what the model sees (memory + view) as token ids and takes token ids back
(`Session.generate`'s remote source).  `refusals` names each setting the server cannot honour:
korepl refuses such settings instead of approximating them.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from types import SimpleNamespace

from korepl.errors import UserError
from korepl.loading import (LoadedModel, ModelUnavailable, _check_hub, _first_line, _paragraph, _quiet_transformers,
                            positions)
from korepl.remote import RemoteError, probe, shown

API_KEY_COMMAND_TIMEOUT = 30.0
INSECURE_WARNING = ("korepl: --insecure: the server's TLS certificate is not checked; anyone on the way can read "
                    "and change what is sent")


class ApiKeyError(UserError):
    """api_key_command failed; the message never holds what the command printed."""


def api_key_from_command(command: str) -> str:
    """The key a command prints (its first line, stripped); ApiKeyError when it fails or prints nothing."""
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=API_KEY_COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApiKeyError(f"api_key_command failed ({type(exc).__name__}); check it in your settings file") from None
    key = done.stdout.strip().splitlines()[0].strip() if done.stdout.strip() else ""
    if done.returncode != 0 or not key:
        why = f"exited with {done.returncode}" if done.returncode != 0 else "printed nothing"
        raise ApiKeyError(f"api_key_command {why}; it must print the API key on its first line")
    return key


def load(config) -> LoadedModel:
    """The model as a korepl.settings.Config says: loaded here, or (with a backend) its tokenizer and a probed server."""
    if config.backend:
        return load_remote(config.model, config.backend, config.insecure, config.api_key_command)
    from korepl.loading import load_model

    return load_model(config.model, config.device, config.dtype, config.quantize)


def server_label(loaded: LoadedModel) -> str:
    """How messages name the server: its address and engine, as in http://127.0.0.1:8080 (llama.cpp)."""
    engine = loaded.remote.engine
    return f"{shown(engine.base_url)} ({engine.name})"


def load_remote(source: str, url: str, insecure: bool = False, api_key_command: str = "") -> LoadedModel:
    """The tokenizer of `source` (hub id or folder; no weights) and the server at `url`, probed and checked.

    ModelUnavailable for a tokenizer that cannot be had; RemoteError (one line) for a server that
    cannot be used (unreachable, no token ids, a vocabulary that does not match the tokenizer's).
    """
    from pathlib import Path

    started = time.perf_counter()
    key = api_key_from_command(api_key_command) if api_key_command else None
    remote = probe(url, key=key, insecure=insecure)
    reason = remote.engine.cannot()
    if reason:
        raise RemoteError(f"{shown(remote.engine.base_url)}: {reason}, so korepl cannot continue a text with it")
    try:
        local = Path(source).expanduser()
        is_dir = local.is_dir()
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelUnavailable(_paragraph(source, f"it is not a folder that can be read ({_first_line(exc)})")) from None
    if is_dir and not (local / "tokenizer.json").is_file():
        raise ModelUnavailable(_paragraph(source, "the folder has no tokenizer.json"))
    where = str(local) if is_dir else source
    try:
        with _quiet_transformers(progress=not is_dir):
            try:
                tokenizer, config = _tokenizer_and_config(where, local_files_only=True)
            except (OSError, ValueError):
                if is_dir:
                    raise
                _check_hub(source)
                tokenizer, config = _tokenizer_and_config(where, local_files_only=False)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(_paragraph(source, _first_line(exc))) from exc
    engine = remote.engine
    if engine.vocab_size is not None and engine.vocab_size != len(tokenizer):
        raise RemoteError(f"{shown(engine.base_url)}: its model has a vocabulary of {engine.vocab_size} tokens, "
                          f"the tokenizer of {source} has {len(tokenizer)}: they are not the same model; "
                          "give --model the model the server runs")
    limits = [n for n in (engine.context_length and engine.context_length - 1,  # the server needs room for one more
                          positions(config),
                          tokenizer.model_max_length if tokenizer.model_max_length < 10**8 else None) if n]
    window = min(limits) if limits else 1024
    name = str(local.resolve()) if is_dir else source
    return LoadedModel(name=name, model=SimpleNamespace(config=config), tokenizer=tokenizer, device=_cpu(),
                       precision="the server's", precision_note=f"{engine.name} at {shown(engine.base_url)}",
                       load_seconds=time.perf_counter() - started, remote=remote, window_size=window)


def _cpu():
    import torch

    return torch.device("cpu")


def _tokenizer_and_config(where: str, local_files_only: bool):
    from transformers import AutoConfig

    from korepl.loading import load_tokenizer

    tokenizer = load_tokenizer(where, local_files_only=local_files_only)
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local_files_only, trust_remote_code=False)
    except (OSError, ValueError):
        config = SimpleNamespace()  # a tokenizer alone is enough: the server holds the model
    return tokenizer, config


# --- what a server can honour ---------------------------------------------------------------------

# Each setting's value that means "off", which any engine honours (by not being asked for anything).
OFF = {"sampler": "softmax", "ban": (), "no_repeat_ngram_size": 0, "repetition_window": None, "min_new_tokens": 0,
       "min_p": 0.0, "repetition_penalty": 1.0}


def refusals(engine, settings) -> list[tuple[str, str]]:
    """(setting, why) for each setting `engine` cannot honour as korepl's own decoding would."""
    out = []
    if settings.sampler == "uniform":
        out.append(("sampler", "has no uniform sampler"))
    if settings.ban:
        out.append(("ban", "cannot ban words"))
    if settings.no_repeat_ngram_size:
        out.append(("no_repeat_ngram_size", "has no n-gram blocking"))
    if settings.repetition_window is not None and engine.api != "llama.cpp":  # llama.cpp: repeat_last_n
        out.append(("repetition_window", "penalises repeats over the whole prompt only"))
    if settings.min_new_tokens and not engine.min_tokens:
        out.append(("min_new_tokens", "has no minimum of new tokens"))
    if settings.repetition_penalty != 1.0 and "repetition_penalty" not in engine.extra_sampling:
        out.append(("repetition_penalty", "has no repetition penalty"))
    elif settings.repetition_penalty != 1.0 and settings.memory:
        out.append(("repetition_penalty", "penalises the memory's tokens too, which korepl's penalty skips "
                                          "(with a memory, keep it at 1)"))
    if not settings.greedy:
        if settings.min_p and "min_p" not in engine.extra_sampling:
            out.append(("min_p", "has no min-p"))
        if "top_k" not in engine.extra_sampling and settings.top_k < top_k_off():
            out.append(("top_k", "has no top-k"))
    return out


def top_k_off() -> int:
    from korepl.settings import TOP_K_MAX

    return TOP_K_MAX  # top_k at its maximum keeps every token: off


def refusal_message(loaded: LoadedModel, name: str, why: str) -> str:
    """The one line a refused setting gets: the server, what it lacks, and that nothing changed."""
    return f"{server_label(loaded)} {why}: {name} is refused (korepl does not approximate it); nothing changed"


def supported(loaded: LoadedModel, settings) -> tuple[object, list[str]]:
    """`settings` with every setting the server cannot honour turned off, and one notice line for each."""
    notes = []
    for name, why in refusals(loaded.remote.engine, settings):
        off = OFF.get(name, None)
        if name == "top_k":
            off = top_k_off()
        settings = dataclasses.replace(settings, **{name: off})
        notes.append(f"korepl: {server_label(loaded)} {why}: using {name} off")
    return settings, notes


def warn_insecure() -> None:
    print(INSECURE_WARNING, file=sys.stderr)
