"""The session owns the truth: the context's token ids and the KV cache that matches them.

Feeding text encodes only that text and leaves it pending; the next forward pass runs the model over
only the pending tokens, with the cache.  Generating is one forward pass over one token per step.
The model sees a window of the context (`view_start` onwards): when the next step would overflow its
positions, the view slides to the most recent part and the cache is rebuilt with one prefill, because
learned absolute positions (KoGPT2's) cannot be shifted.  The full context is never lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from korepl import sampling
from korepl.loading import LoadedModel
from korepl.settings import Settings
from korepl.stream import TextGate

# A mid-word join re-encodes the last word with the new text; words longer than this are left alone.
MAX_REJOIN_TOKENS = 16


@dataclass(frozen=True)
class Step:
    """One generated token and the text that became safe to show with it (often the token's own)."""

    token_id: int
    text: str
    probability: float


@dataclass(frozen=True)
class Ending:
    """Why the last generation ended: 'stop-token', 'stop-text', 'max-tokens' or 'interrupted'."""

    reason: str
    detail: str = ""
    new_tokens: int = 0


class Session:
    def __init__(self, loaded: LoadedModel, settings: Settings):
        self.loaded = loaded
        self.settings = settings  # what `generate` uses unless told otherwise
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.window = loaded.window
        self.ids: list[int] = []  # the whole context
        self.text = ""  # the writer's text: what was fed and what was generated
        self.view_start = 0  # the model sees ids[view_start:]
        self.tokens_run = 0  # tokens passed through the model so far (tests and benchmarks read it)
        self.slides = 0
        self.last_ending: Ending | None = None
        self._cache = DynamicCache()
        self._cached = 0  # ids[view_start : view_start + _cached] are in the cache
        self._logits: torch.Tensor | None = None  # next-token logits after the cached ids
        self._word_marker = self._find_word_marker()
        self._newline_ok = "\n" in self.decode(self.encode("가\n가"))

    # --- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def model_text(self, text: str) -> str:
        """What the model is given for `text`: a vocabulary without a newline (KoGPT2's) gets a space."""
        return text if self._newline_ok else text.replace("\r\n", "\n").replace("\n", " ")

    def _find_word_marker(self) -> str | None:
        """The character a word-initial token starts with ('▁' for KoGPT2, 'Ġ' for byte-level BPE), if any."""
        ids = self.encode(" a")
        if not ids:
            return None
        first = self.tokenizer.convert_ids_to_tokens(ids[0])
        return first[0] if first and first[0] != "a" else None

    # --- feeding --------------------------------------------------------------------------------

    def feed(self, text: str) -> int:
        """Append `text` to the context; returns how many tokens it became.  Runs no model."""
        if not text:
            return 0
        model_text = self.model_text(text)
        rejoin = self._rejoin_start(model_text)
        if rejoin < len(self.ids):
            tail = self.decode(self.ids[rejoin:])
            self._truncate(rejoin)
            new_ids = self.encode(tail + model_text)
        else:
            new_ids = self.encode(model_text)
        self.ids.extend(new_ids)
        self.text += text
        return len(new_ids)

    def add_line(self, line: str) -> int:
        """Join a typed line to the text, with the separator the `join` setting asks for."""
        if not self.text or self.text[-1:].isspace():
            separator = ""
        else:
            separator = {"newline": "\n", "space": " ", "none": ""}[self.settings.join]
        return self.feed(separator + line)

    def _rejoin_start(self, model_text: str) -> int:
        """Where re-encoding must start so a join inside a word tokenizes as the whole text would."""
        if not self.ids or model_text[:1].isspace() or self._word_marker is None:
            return len(self.ids)
        lowest = max(self.view_start, len(self.ids) - MAX_REJOIN_TOKENS)
        for index in range(len(self.ids) - 1, lowest - 1, -1):
            token = self.tokenizer.convert_ids_to_tokens(self.ids[index])
            if token.startswith(self._word_marker):
                return index
        return len(self.ids)

    def _truncate(self, length: int) -> None:
        """Drop ids from `length` on, cropping the cache to match (no model run)."""
        if length >= len(self.ids):
            return
        del self.ids[length:]
        keep_cached = max(0, length - self.view_start)
        if keep_cached < self._cached:
            self._crop_cache_to(keep_cached)
            self._logits = None
        if length <= self.view_start:  # nothing of the view is left: look at the context from its start
            self._reset_view(0)

    # --- the model --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Tokens in the context that the model has not run over yet."""
        return len(self.ids) - self.view_start - self._cached

    def next_logits(self) -> torch.Tensor:
        """Logits for the token after the context, running only what is pending (and sliding if full)."""
        if not self.ids:
            self._seed_empty_context()
        if self.pending == 0:
            if self._logits is not None:
                return self._logits
            self._crop_cache_to(self._cached - 1)  # after a crop: re-run the last token for its logits
        if self._cached + self.pending > self.window:
            self._slide()
        self._run(self.ids[self.view_start + self._cached:])
        return self._logits

    def _seed_empty_context(self) -> None:
        """Nothing to continue from: start from the beginning-of-text token, as `generate` would."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise ValueError("the context is empty and this tokenizer has no beginning-of-text token")
        self.ids.append(bos)

    def _slide(self) -> None:
        keep = max(1, int(self.window * self.settings.window_keep))
        self._reset_view(len(self.ids) - keep)
        self.slides += 1

    def _reset_view(self, view_start: int) -> None:
        self.view_start = view_start
        self._cache = DynamicCache()
        self._cached = 0
        self._logits = None

    def _run(self, chunk: list[int]) -> None:
        if not chunk:
            return
        device = self.loaded.device
        input_ids = torch.tensor([chunk], dtype=torch.long, device=device)
        attention_mask = torch.ones((1, self._cached + len(chunk)), dtype=torch.long, device=device)
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except BaseException:
            # Ctrl+C (or any failure) inside the forward pass may leave some layers longer than others.
            self._crop_cache_to(self._cached)
            raise
        self._cached += len(chunk)
        self.tokens_run += len(chunk)
        self._logits = out.logits[0, -1].float()

    def _crop_cache_to(self, length: int) -> None:
        for layer in self._cache.layers:
            excess = layer.get_seq_length() - length
            if excess > 0:
                layer.crop(-excess)
        self._cached = min(self._cached, length)

    def visible_ids(self) -> torch.Tensor:
        """The ids the model sees (the repetition penalty's history)."""
        return torch.tensor(self.ids[self.view_start:], dtype=torch.long, device=self.loaded.device)

    # --- generating -----------------------------------------------------------------------------

    def generate(self) -> Iterator[Step]:
        """Continue the context one token at a time, under `self.settings`.  Then `last_ending` says why it stopped.

        Text is shown only once it is whole and cannot be the start of a stop text.  When generation
        ends for any reason, Ctrl+C included, tokens whose text was not shown are dropped, so the
        context always equals what was shown.
        """
        settings = self.settings
        if not self.ids:
            self._seed_empty_context()
        stop_ids, stop_texts = self.split_stops(settings.stop)
        generator = sampling.make_generator(settings.seed)
        gate = TextGate(self.decode, self.ids, stop_texts)
        start = len(self.ids)
        ending = Ending("interrupted")
        try:
            while len(self.ids) - start < settings.max_new_tokens:
                choice = sampling.choose(self.next_logits(), self.visible_ids(), settings, generator)
                if choice.token_id in stop_ids:
                    ending = Ending("stop-token", self.tokenizer.convert_ids_to_tokens(choice.token_id))
                    break
                self.ids.append(choice.token_id)
                text = gate.push(choice.token_id)
                if text:
                    yield self._show(Step(choice.token_id, text, choice.probability))
                if gate.stopped_by is not None:
                    ending = Ending("stop-text", gate.stopped_by)
                    break
            else:
                ending = Ending("max-tokens")
            if ending.reason != "stop-text":
                text = gate.finish()
                if text:
                    yield self._show(Step(self.ids[-1], text, 1.0))
        finally:
            self._truncate(start + gate.shown_ids)
            self.last_ending = Ending(ending.reason, ending.detail, len(self.ids) - start)

    def _show(self, step: Step) -> Step:
        """Record shown text in the writer's text; a text's very first words get no leading space."""
        if not self.text:
            step = Step(step.token_id, step.text.lstrip(), step.probability)
        self.text += step.text
        return step

    def split_stops(self, stops: tuple[str, ...]) -> tuple[set[int], tuple[str, ...]]:
        """Entries that name a special token (</s>, </d>, <unused0> ...) stop on its id; the rest on text."""
        added = self.tokenizer.get_added_vocab()
        ids = {added[s] for s in stops if s in added}
        texts = tuple(self.model_text(s) for s in stops if s not in added)
        return ids, texts
