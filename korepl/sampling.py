"""Pure functions on one next-token logits vector: the transforms, then the pick.

Order and semantics follow Hugging Face `generate`: repetition penalty, then temperature, top-k and
top-p, then the pick.  Greedy is the argmax after the penalty, which is what `generate(do_sample=False)`
does, so greedy ids match it exactly.  Nothing here knows about sessions or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from korepl.settings import Settings


def apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF semantics: each id seen in `history` gets its score divided by `penalty`, or multiplied when negative."""
    if penalty == 1.0 or history.numel() == 0:
        return logits
    seen = logits.gather(0, history)
    penalised = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(0, history, penalised)


def no_repeat_ngram_bans(history: Sequence[int], n: int) -> list[int]:
    """HF `no_repeat_ngram_size` semantics: ids that would complete an n-gram already in `history`."""
    if n <= 0 or len(history) + 1 < n:
        return []
    tail = tuple(history[len(history) - n + 1:]) if n > 1 else ()
    return [history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i:i + n - 1]) == tail]


def bad_words_bans(history: Sequence[int], sequences: Sequence[Sequence[int]]) -> list[int]:
    """HF `bad_words_ids` semantics: a sequence's last id is banned when the ids before it end `history`."""
    banned = []
    for sequence in sequences:
        head = list(sequence[:-1])
        if not head or (len(head) <= len(history) and list(history[len(history) - len(head):]) == head):
            banned.append(sequence[-1])
    return banned


def min_new_tokens_bans(new_tokens: int, min_new_tokens: int, stop_ids: Sequence[int]) -> list[int]:
    """HF `min_new_tokens` semantics: stop tokens may not be picked before `min_new_tokens` new tokens."""
    return list(stop_ids) if new_tokens < min_new_tokens else []


def top_k_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (ids, scores), best first.  k past the vocabulary means all of it."""
    scores, ids = torch.topk(logits, min(k, logits.shape[-1]))
    return ids, scores


def top_p_keep(scores: torch.Tensor, p: float) -> int:
    """How many of `scores` (sorted best first) form the smallest set whose probability reaches p.

    HF semantics, summed from the bottom as HF does: a token goes when it and everything below it
    hold at most 1 - p of the mass; the best token always stays.
    """
    if p >= 1.0:
        return scores.shape[-1]
    probs = torch.softmax(scores.float(), dim=-1)
    mass_from_bottom = torch.cumsum(probs.flip(-1), dim=-1).flip(-1)
    return max(1, int((mass_from_bottom > 1 - p).sum()))


@dataclass(frozen=True)
class Choice:
    token_id: int
    probability: float  # the model's probability of this token after penalty and temperature


def scores(logits: torch.Tensor, history: torch.Tensor, settings: Settings, banned: Sequence[int] = ()) -> torch.Tensor:
    """The logits the pick works on: repetition penalty, bans (-inf), then temperature unless greedy.

    Their softmax is the model's probability of each next token under the settings (what /peek shows).
    """
    logits = apply_repetition_penalty(logits.float(), history, settings.repetition_penalty)
    if banned:
        logits = logits.index_fill(0, torch.tensor(sorted(set(banned)), device=logits.device), float("-inf"))
    return logits if settings.greedy else logits / settings.temperature


def choose(logits: torch.Tensor, history: torch.Tensor, settings: Settings, generator: torch.Generator,
           banned: Sequence[int] = ()) -> Choice:
    """Pick the next token from one logits vector under `settings`.

    `history`: the ids the repetition penalty counts; `banned`: ids that may not be picked at all.
    """
    logits = scores(logits, history, settings, banned)
    if settings.greedy:
        token_id = int(torch.argmax(logits))
        return Choice(token_id, float(torch.softmax(logits, dim=-1)[token_id]))
    ids, top = top_k_candidates(logits, settings.top_k)
    keep = top_p_keep(top, settings.top_p)
    ids, top = ids[:keep].cpu(), top[:keep].cpu()
    finite = torch.isfinite(top)  # banned ids can reach the candidates only when too few others are left
    ids, top = ids[finite], top[finite]
    index = pick_index(top, settings.sampler, generator)
    token_id = int(ids[index])
    probability = float(torch.exp(top[index] - torch.logsumexp(logits, dim=-1).cpu()))
    return Choice(token_id, probability)


def pick_index(scores: torch.Tensor, sampler: str, generator: torch.Generator) -> int:
    """Index into `scores` (CPU): weighted by softmax, or uniform (every candidate equally likely)."""
    if sampler == "uniform":
        return int(torch.randint(scores.shape[-1], (1,), generator=generator))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible runs, else from fresh entropy."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
