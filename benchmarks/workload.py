"""What the sections ask of korepl: the benchmark's settings, prompt and contexts, and writing with a session."""

from __future__ import annotations

import dataclasses
import functools

from benchmarks.fixtures import drain, text_with_tokens
from benchmarks.timing import timed
from korepl.loading import LoadedModel
from korepl.session import Session
from korepl.settings import Settings, load_defaults

PROMPT = "수강신청에서 원하는 강의를 신청하기 위해서는"
REPETITION_PENALTY = 2.0  # the source study's


@functools.cache
def default_decoding() -> Settings:
    """The shipped defaults, read once (a run keeps the settings it started with)."""
    return load_defaults().decoding


def greedy_settings(max_new_tokens: int) -> Settings:
    """Greedy with the source study's repetition penalty, nothing else that changes the ids."""
    return dataclasses.replace(default_decoding(), greedy=True, stop=(), max_new_tokens=max_new_tokens,
                               repetition_penalty=REPETITION_PENALTY, no_repeat_ngram_size=0, repetition_window=None,
                               ban=(), min_new_tokens=0, mode="write")


def stock(loaded: LoadedModel, folder, dtype: str = "float32") -> LoadedModel:
    """The baseline's model: the saved folder as transformers itself loads it (GPT-2's own layers and layouts, none of
    korepl's arrangements), on the same device and tokenizer, for `generate`."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(loaded.device).eval()
    return dataclasses.replace(loaded, model=model.requires_grad_(False), precision=dtype, compiled=None)


def context_text(loaded: LoadedModel, tokens: int) -> str:
    """Prose that korepl encodes to exactly `tokens` tokens."""
    return text_with_tokens(Session(loaded, greedy_settings(1)).encode, tokens)


def korepl_continue(loaded: LoadedModel, prompt: str, new_tokens: int, session: Session | None = None) -> Session:
    """Feed the prompt to a new session and write `new_tokens` greedily: the prompt's prefill, then one step each."""
    session = session or Session(loaded, greedy_settings(new_tokens))
    session.feed(prompt)
    drain(session)
    return session


def korepl_task(loaded: LoadedModel, prompt: str, new_tokens: int):
    """(prepare, run) for `interleaved`: the session is made untimed, as the REPL makes it before the first line."""
    return (lambda: Session(loaded, greedy_settings(new_tokens)),
            lambda session: korepl_continue(loaded, prompt, new_tokens, session))


def prefilled_session(loaded: LoadedModel, context: str, settings: Settings) -> Session:
    """A session whose text is `context` (a turn of its own, so that it can be saved), already prefilled."""
    session = Session(loaded, settings)
    if context:
        session.add_line(context)
        session.next_logits()
    return session


def korepl_step_seconds(loaded: LoadedModel, context: str, tokens: int) -> float:
    """Seconds per generated token, from an already prefilled context (each token is one forward step)."""
    session = Session(loaded, greedy_settings(tokens))
    session.feed(context)
    session.next_logits()
    seconds, _ = timed(lambda: drain(session), loaded.device)
    if session.last_ending.new_tokens != tokens:
        raise RuntimeError(f"asked for {tokens} tokens, got {session.last_ending.new_tokens}")
    return seconds / tokens


def best_step_seconds(loaded: LoadedModel, context: str, tokens: int, repeats: int) -> tuple[float, list[float]]:
    """(best, every) seconds per token over `repeats` + 1 runs of `korepl_step_seconds`, after a short warm-up."""
    korepl_step_seconds(loaded, context, 4)
    times = [korepl_step_seconds(loaded, context, tokens) for _ in range(repeats + 1)]
    return min(times), times


def kept_tokens(loaded: LoadedModel) -> int:
    """How many tokens a window slide keeps (and re-prefills) under the benchmark's settings."""
    return int(loaded.window * greedy_settings(1).window_keep)
