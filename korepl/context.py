"""The context's token ids and the KV cache that matches the part the model sees.

The model sees a window of the ids (`view_start` onwards) and the runner's cache holds the first
`runner.cached_len` of them.  Every change of the ids goes through `become` (or its tail form
`replace_tail`), `append` or `truncate`: the cache is cropped to what the old and new ids share and
only the rest is run, by `next_logits`, when logits are asked for.  When the next step would overflow
the model's positions, the view slides to the most recent `keep` share of the ids and the cache is
rebuilt with one prefill, because learned absolute positions (KoGPT2's) cannot be shifted.  The ids
themselves are never lost.

Nothing here knows about turns or settings; the session says which ids the context must become.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch

from korepl.loading import LoadedModel
from korepl.runner import make_runner

# Places whose next-token logits are kept, so that moving between recent turns runs no model.
# Bounded: a logits vector is a vocabulary's worth of floats, too much to keep for every turn of a long session.
LOGITS_KEPT = 8


class Context:
    def __init__(self, loaded: LoadedModel, keep: float = 1.0):
        self.window = loaded.window
        self.device = loaded.device
        self.keep = keep  # the share of the window a slide keeps (the window_keep setting)
        self.ids: list[int] = []
        self.view_start = 0  # the model sees ids[view_start:]
        # The model and its KV cache, which holds ids[view_start : view_start + runner.cached_len].
        self.runner = make_runner(loaded.model, loaded.device)
        self.tokens_run = 0  # tokens passed through the model so far (tests and benchmarks read it)
        self.slides = 0
        self.unchanged = 0  # how many leading ids are as they were at the last `mark`
        self._logits: torch.Tensor | None = None  # next-token logits after the cached ids, when known
        self._known: OrderedDict[Hashable, tuple[int, torch.Tensor]] = OrderedDict()  # recent places only

    # --- changing the ids -------------------------------------------------------------------------

    def become(self, ids: Sequence[int]) -> None:
        """Make `ids` the context: crop the cache to the prefix they share with the current ids, add the rest."""
        common = self._shared(0, ids)
        self.replace_tail(common, ids[common:])

    def replace_tail(self, start: int, tail: Sequence[int]) -> None:
        """Make ids[:start] + tail the context (the cache is cropped at `start`); the view is made to fit."""
        unchanged = min(self.unchanged, self._shared(start, tail))
        self.truncate(start)
        self.ids.extend(tail)
        self.unchanged = unchanged
        self.fit_view()

    def append(self, token_id: int) -> None:
        """One generated id; `next_logits` slides the view if it no longer fits."""
        self.ids.append(token_id)

    def truncate(self, length: int) -> None:
        """Drop ids from `length` on, cropping the cache to match (no model run)."""
        if length >= len(self.ids):
            return
        del self.ids[length:]
        self.unchanged = min(self.unchanged, length)
        keep_cached = max(0, length - self.view_start)
        if keep_cached < self.runner.cached_len:
            self.runner.crop(keep_cached)
            self._logits = None
        if length <= self.view_start:  # nothing of the view is left: look at the context from its start
            self.reset_view(0)

    def restore(self, ids: Sequence[int], view_start: int) -> None:
        """Take saved ids and view whole; the cache is rebuilt with one prefill, and nothing remembered applies."""
        self.forget()
        self.ids = list(ids)
        self.reset_view(view_start)
        self.fit_view()

    def mark(self) -> None:
        """Start counting `unchanged` ids afresh (the ids are now a recorded state)."""
        self.unchanged = len(self.ids)

    def _shared(self, start: int, tail: Sequence[int]) -> int:
        """`start` plus how many of `tail`'s leading ids already stand at ids[start:]."""
        ids, n, i = self.ids, min(len(self.ids) - start, len(tail)), 0
        while i < n and ids[start + i] == tail[i]:
            i += 1
        return start + i

    # --- the view ---------------------------------------------------------------------------------

    def fit_view(self) -> None:
        """Keep the promise that the model's view is never longer than its window (slide when it would be)."""
        if len(self.ids) - self.view_start > self.window:
            self.slide()

    def slide(self) -> None:
        """Look at only the most recent `keep` share of the window; the cache is rebuilt when next run."""
        self.reset_view(len(self.ids) - max(1, int(self.window * self.keep)))
        self.slides += 1

    def reset_view(self, view_start: int) -> None:
        self.view_start = view_start
        self.runner.reset()
        self._logits = None

    # --- the model --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Ids in the view that the model has not run over yet."""
        return len(self.ids) - self.view_start - self.runner.cached_len

    def next_logits(self) -> torch.Tensor:
        """Logits for the token after the ids (which must not be empty), running only what is pending."""
        if self.pending == 0:
            if self._logits is not None:
                return self._logits
            self.runner.crop(self.runner.cached_len - 1)  # after a crop: re-run the last id for its logits
        if self.runner.cached_len + self.pending > self.window:
            self.slide()
        chunk = self.ids[self.view_start + self.runner.cached_len:]
        self._logits = self.runner.run(chunk)
        self.tokens_run += len(chunk)
        return self._logits

    # --- logits remembered for recent places ------------------------------------------------------

    def remember(self, place: Hashable) -> None:
        """Keep the current logits for `place` (when they are known), so that `recall(place)` runs no model."""
        if self.pending == 0 and self._logits is not None:
            self._known[place] = (self.view_start, self._logits)
            self._known.move_to_end(place)
            while len(self._known) > LOGITS_KEPT:
                self._known.popitem(last=False)
        else:
            self._known.pop(place, None)

    def recall(self, place: Hashable) -> None:
        """After `become(place's ids)`: take the logits remembered for `place`, when they still apply."""
        known = self._known.get(place)
        if self.pending == 0 and known is not None and known[0] == self.view_start:
            self._logits = known[1]

    def forget(self) -> None:
        self._known.clear()
