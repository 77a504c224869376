"""Figures of one continuation, as Ollama's --verbose gives them, and the facts /show info lists.

`Stats` is filled by `Session.generate` as it goes: the prompt tokens the model ran before choosing
the first token (the prefill) and how long that took, when the first token was chosen, and how many
tokens were generated over how long.  `lines` formats them for `korepl --verbose` (on stderr) and
`/stats`.  Nothing here imports torch: the REPL loads it before the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0  # tokens the prefill ran (only what the cache lacked)
    prefill_seconds: float = 0.0
    first_token_seconds: float | None = None  # from the start to the first token chosen
    decode_tokens: int = 0  # tokens generated and kept
    decode_seconds: float = 0.0  # from the end of the prefill to the end of the continuation
    total_seconds: float | None = None  # None while the continuation runs

    def prefilled(self, tokens: int) -> None:
        self.prompt_tokens = tokens
        self.prefill_seconds = time.perf_counter() - self.started

    def token(self) -> None:
        """A token was chosen; the first one's time is the time to first token."""
        if self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.started

    def finish(self, generated: int) -> None:
        self.total_seconds = time.perf_counter() - self.started
        self.decode_tokens = generated
        self.decode_seconds = max(0.0, self.total_seconds - self.prefill_seconds)

    def lines(self, load_seconds: float | None = None) -> list[str]:
        """Ollama-like lines; with `load_seconds` (one-shot) the load counts in the total, as Ollama counts it."""
        total = (self.total_seconds or 0.0) + (load_seconds or 0.0)
        rows = [("total duration", _seconds(total))]
        if load_seconds is not None:
            rows.append(("load duration", _seconds(load_seconds)))
        rows += [
            ("prompt eval count", f"{self.prompt_tokens} token(s)"),
            ("prompt eval duration", _seconds(self.prefill_seconds)),
            ("prompt eval rate", _rate(self.prompt_tokens, self.prefill_seconds)),
            ("time to first token", _seconds(self.first_token_seconds) if self.first_token_seconds is not None
             else "(no token was generated)"),
            ("eval count", f"{self.decode_tokens} token(s)"),
            ("eval duration", _seconds(self.decode_seconds)),
            ("eval rate", _rate(self.decode_tokens, self.decode_seconds)),
        ]
        width = max(len(name) for name, _ in rows) + 1
        return [f"{name + ':':<{width}} {value}" for name, value in rows]


def _seconds(value: float) -> str:
    return f"{value * 1000:.2f}ms" if value < 1 else f"{value:.3f}s"


def _rate(tokens: int, seconds: float) -> str:
    # A cached prompt runs no token: a rate of nothing would be a made-up number.
    return f"{tokens / seconds:.2f} tokens/s" if tokens and seconds > 0 else "–"


def of(session) -> Stats | None:
    """The session's last continuation's figures; None before its first."""
    return session.last_stats


def count(n: int) -> str:
    """125_200_000 -> '125.2M', as model cards write parameter counts."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def model_facts(loaded, threads: int) -> list[tuple[str, str]]:
    """The rows of /show info for a LoadedModel; `threads` is the setting (0: torch's default)."""
    import torch

    config = loaded.model.config
    rows = [("model", loaded.name), ("parameters", count(loaded.parameters))]
    for label, names in (("layers", ("n_layer", "num_hidden_layers")), ("heads", ("n_head", "num_attention_heads")),
                         ("width", ("n_embd", "hidden_size"))):
        value = next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), None)
        if value is not None:  # not every config names them; say only what it has
            rows.append((label, str(value)))
    rows += [("window", f"{loaded.window} tokens"), ("vocabulary", f"{len(loaded.tokenizer)} tokens"),
             ("precision", f"{loaded.precision} ({loaded.precision_note})"),
             ("weight layout", f"{loaded.layout} ({loaded.layout_note})"),
             ("attention", f"{loaded.attention or loaded.precision} ({loaded.attention_note})"),
             ("prefill products", f"{loaded.prefill or loaded.precision} ({loaded.prefill_note})"), ("device", loaded.where),
             ("threads", f"{torch.get_num_threads()}" + (" (torch's default)" if threads == 0 else ""))]
    return rows
