"""The pick step on one next-token logits vector: the transforms, then the pick.

The bodies are pure functions whose order and semantics follow Hugging Face `generate`: repetition
penalty, the bans (repeated n-grams, bad words, stop tokens before min_new_tokens, suppressed
tokens), then temperature, top-k, top-p and min-p, then the pick.  Greedy is the argmax after the
penalty and bans, which is what `generate(do_sample=False)` does, so greedy ids match it exactly.
`sampling_set` is the one place the pick's choices and their chances are worked out: `pick` draws
from it and `chances` (what /peek shows) reads it.

`processors` builds, once per settings change, the list of those transforms that the settings ask
for (as HF's LogitsProcessorList: each a small callable, applied in order); `PickStep` runs it, picks,
and picks again when the chosen token would write a banned word some other way.  Nothing here knows
about sessions or models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from korepl.settings import Settings

if TYPE_CHECKING:
    from korepl.controls import Controls

# Tokens of recent text checked for a banned word that the chosen token would complete.
BAN_LOOKBACK = 16
# How many picks in a row may be turned away for writing a banned word (in practice one or two are).
MAX_BAN_REPICKS = 64


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


def ban(logits: torch.Tensor, banned: Sequence[int]) -> torch.Tensor:
    """`logits` with the `banned` ids at -inf (they cannot be picked)."""
    if not banned:
        return logits
    return logits.index_fill(0, torch.tensor(sorted(set(banned)), device=logits.device), float("-inf"))


def min_p_keep(scores: torch.Tensor, min_p: float) -> int:
    """How many of `scores` (sorted best first) reach min_p times the best one's probability.

    HF MinPLogitsWarper semantics: a token goes when its probability is below min_p x the top
    probability; the best token always stays.  0 keeps everything.
    """
    if min_p <= 0.0:
        return scores.shape[-1]
    probs = torch.softmax(scores.float(), dim=-1)
    return max(1, int((probs >= min_p * probs.amax()).sum()))  # sorted, so the kept ones are a prefix


@dataclass(frozen=True)
class SamplingSet:
    """The tokens a pick can choose, best first, each with its exact chance of being picked.

    Each filter keeps a prefix of the best-first order, so `cuts` records, in the order applied,
    (what cut, how many of the best it left): enough to say why any other token is outside.
    """

    ids: torch.Tensor  # CPU, best first
    chances: torch.Tensor  # CPU float, same order; they sum to 1
    cuts: tuple[tuple[str, int], ...]

    def why_outside(self, rank: int) -> str:
        """The filter that left out the token at `rank` (0 = best) of the best-first order."""
        return next((name for name, kept in self.cuts if rank >= kept), "the bans")


def sampling_set(scores: torch.Tensor, settings: Settings) -> SamplingSet:
    """What `pick` chooses from: greedy's argmax, else top-k, then top-p, then min-p (HF's order),
    with softmax or equal chances.  The one place the set and its chances are worked out."""
    if settings.greedy:
        token_id = torch.argmax(scores).reshape(1).cpu()  # argmax exactly, as generate(do_sample=False)
        return SamplingSet(token_id, torch.ones(1), (("greedy's choice", 1),))
    ids, top = top_k_candidates(scores, settings.top_k)
    cuts = [(f"top-k {settings.top_k}", top.shape[-1])]
    keep = top_p_keep(top, settings.top_p)
    cuts.append((f"top-p {settings.top_p:g}", keep))
    ids, top = ids[:keep].cpu(), top[:keep].cpu()
    if settings.min_p > 0.0:
        keep = min_p_keep(top, settings.min_p)
        cuts.append((f"min-p {settings.min_p:g}", keep))
        ids, top = ids[:keep], top[:keep]
    finite = torch.isfinite(top)  # banned ids can reach the candidates only when too few others are left
    ids, top = ids[finite], top[finite]
    if settings.sampler == "uniform":
        chances = torch.full(top.shape, 1.0 / top.shape[-1])
    else:
        chances = torch.softmax(top.float(), dim=-1)
    return SamplingSet(ids, chances, tuple(cuts))


def chances(scores: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Each token's exact chance that `pick` picks it from `scores` (CPU, vocabulary-long; 0 outside the set)."""
    chosen = sampling_set(scores, settings)
    return torch.zeros(scores.shape[-1]).index_copy(0, chosen.ids, chosen.chances.float())


def pick(logits: torch.Tensor, settings: Settings, generator: torch.Generator) -> Choice:
    """Pick from logits the processors have made: a draw from `sampling_set` by its chances."""
    chosen = sampling_set(logits, settings)
    index = 0 if chosen.ids.shape[-1] == 1 else int(torch.multinomial(chosen.chances, 1, generator=generator))
    token_id = int(chosen.ids[index])
    probability = float(torch.softmax(logits.float(), dim=-1)[token_id])
    return Choice(token_id, probability)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible runs, else from fresh entropy."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# --- the transforms as a list, built once per settings change --------------------------------------


class At(NamedTuple):
    """Where a pick happens: the whole context's ids, where the model's view starts, how many ids this
    generation has added so far."""

    ids: Sequence[int]
    view_start: int
    new_tokens: int = 0


Processor = Callable[[torch.Tensor, At], torch.Tensor]


def penalty_ids(ids: Sequence[int], view_start: int, last: int | None) -> Sequence[int]:
    """The ids the repetition penalty counts: what the model sees, or only its `last` ids."""
    return ids[view_start if last is None else max(view_start, len(ids) - last):]


class Processors:
    """The transforms, in order, over float logits (HF's LogitsProcessorList.__call__)."""

    def __init__(self, steps: Sequence[Processor]):
        self.steps = tuple(steps)

    def __call__(self, logits: torch.Tensor, at: At) -> torch.Tensor:
        scores = logits.float()
        for step in self.steps:
            scores = step(scores, at)
        return scores


def processors(settings: Settings, controls: Controls, device: torch.device | str = "cpu") -> Processors:
    """The transforms `settings` ask for, as `controls` spell them in ids, in Hugging Face's order."""
    steps: list[Processor] = []
    penalty, last = settings.repetition_penalty, settings.repetition_window
    if penalty != 1.0:
        steps.append(lambda scores, at: apply_repetition_penalty(
            scores, torch.tensor(penalty_ids(at.ids, at.view_start, last), dtype=torch.long, device=device), penalty))
    n = settings.no_repeat_ngram_size
    if n > 0:
        steps.append(lambda scores, at: ban(scores, no_repeat_ngram_bans(at.ids[at.view_start:], n)))
    sequences = controls.ban_sequences
    if sequences:
        steps.append(lambda scores, at: ban(scores, bad_words_bans(at.ids[at.view_start:], sequences)))
    minimum, stops = settings.min_new_tokens, sorted(controls.stop_ids)
    if minimum > 0 and stops:
        steps.append(lambda scores, at: ban(scores, min_new_tokens_bans(at.new_tokens, minimum, stops)))
    if controls.suppress_ids:
        suppress = torch.tensor(sorted(controls.suppress_ids), device=device)
        steps.append(lambda scores, at: scores.index_fill(0, suppress, float("-inf")))
    if not settings.greedy:
        temperature = settings.temperature
        steps.append(lambda scores, at: scores / temperature)
    return Processors(steps)


class PickStep:
    """One pick under one Settings+Controls: processors, then the pick, then a pick again (without it)
    while the chosen token would write a banned word that the banned id sequences did not catch."""

    def __init__(self, settings: Settings, controls: Controls, decode: Callable[[Sequence[int]], str],
                 device: torch.device | str = "cpu"):
        self.settings = settings
        self.processors = processors(settings, controls, device)
        self.ban_texts = controls.ban_texts
        self.decode = decode  # ids -> the text the writer sees

    def scores(self, logits: torch.Tensor, at: At) -> torch.Tensor:
        """The logits the pick works on; their softmax is each next token's probability (what /peek shows)."""
        return self.processors(logits, at)

    def __call__(self, logits: torch.Tensor, at: At, generator: torch.Generator) -> Choice:
        scores = self.processors(logits, at)
        for _ in range(MAX_BAN_REPICKS):
            choice = pick(scores, self.settings, generator)
            if not self.writes_banned_text(at.ids, choice.token_id):
                break
            scores = ban(scores, [choice.token_id])  # a banned word spelt some other way: pick again without it
        return choice

    def writes_banned_text(self, ids: Sequence[int], token_id: int) -> bool:
        if not self.ban_texts:
            return False
        tail = list(ids[-BAN_LOOKBACK:])
        before, after = self.decode(tail), self.decode(tail + [token_id])
        return any(after.count(word) > before.count(word) for word in self.ban_texts)
