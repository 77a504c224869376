"""The context's token ids and the KV cache that matches the part the model sees.

The model sees the memory's ids (a premise kept whatever the length: llama.cpp's n_keep, KoboldAI's
memory), then a window of the text's ids (`view_start` onwards); the runner's cache holds the first
`runner.cached_len` of (memory + view).  Every change of the ids goes through `become` (or its tail form
`replace_tail`), `append` or `truncate`: the cache is cropped to what the old and new ids share and
only the rest is run, by `next_logits`, when logits are asked for.  When the next step would overflow
the model's positions, the view slides to the most recent `keep` share of the room the memory leaves,
and the view's part of the cache is rebuilt with one prefill, because learned absolute positions
(KoGPT2's) cannot be shifted; the memory's part stays, as its positions come first.  The ids
themselves are never lost.

Nothing here knows about turns or settings; the session says which ids the context must become.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch

from korepl.loading import LoadedModel
from korepl.runner import RemoteRunner, make_runner

# Places whose next-token logits are kept, so that moving between recent turns runs no model.
# Bounded: a logits vector is a vocabulary's worth of floats, too much to keep for every turn of a long session.
LOGITS_KEPT = 8


class Context:
    def __init__(self, loaded: LoadedModel, keep: float = 1.0):
        self.window = loaded.window
        self.device = loaded.device
        self.keep = keep  # the share of the window a slide keeps (the window_keep setting)
        self.ids: list[int] = []
        self.memory: list[int] = []  # ids the model always sees first, kept apart from the text's ids
        self.view_start = 0  # the model sees memory + ids[view_start:]
        # The model and its KV cache, which holds (memory + ids[view_start:])[:runner.cached_len].
        self.runner = (RemoteRunner() if loaded.remote is not None
                       else make_runner(loaded.model, loaded.device, loaded.compiled, loaded.ops))
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
        keep_cached = len(self.memory) + max(0, length - self.view_start)
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

    def set_memory(self, memory: Sequence[int]) -> None:
        """Make `memory` what the model sees first: the cache is cropped to what old and new (memory + view)
        share, so only the rest runs; the view slides if memory + view no longer fit."""
        memory = list(memory)
        if memory == self.memory:
            return
        cached = self.runner.cached_len
        old = (self.memory + self.ids[self.view_start:])[:cached]
        new = memory + self.ids[self.view_start:]
        shared = 0
        while shared < min(len(old), len(new)) and old[shared] == new[shared]:
            shared += 1
        self.memory = memory
        if shared < cached:
            self.runner.crop(shared)
            self._logits = None
        self.forget()  # logits remembered for places were read after the old memory
        self.fit_view()

    def seen(self) -> list[int]:
        """What the model sees: the memory, then the view of the text."""
        return self.memory + self.ids[self.view_start:]

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
        if len(self.memory) + len(self.ids) - self.view_start > self.window:
            self.slide()
        elif self.view_start and len(self.memory) + len(self.ids) <= self.window:
            # The whole text fits again (after an undo or a /goto back past a slide): the model sees
            # all of it, as it would after a fresh start on the same text.
            self.reset_view(0)

    def slide(self) -> None:
        """Look at only the most recent `keep` share of the room the memory leaves; rebuilt when next run."""
        room = self.window - len(self.memory)
        self.reset_view(len(self.ids) - max(1, int(room * self.keep)))
        self.slides += 1

    def reset_view(self, view_start: int) -> None:
        self.view_start = view_start
        if self.memory:  # the memory's positions come first whatever the view: its cache stays good
            self.runner.crop(len(self.memory))
        else:
            self.runner.reset()
        self._logits = None

    # --- the model --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Ids of memory + view that the model has not run over yet."""
        return len(self.memory) + len(self.ids) - self.view_start - self.runner.cached_len

    def next_logits(self) -> torch.Tensor:
        """Logits for the token after the ids (memory + view must not be empty), running only what is pending."""
        if self.pending == 0:
            if self._logits is not None:
                return self._logits
            self.runner.crop(self.runner.cached_len - 1)  # after a crop: re-run the last id for its logits
        if self.runner.cached_len + self.pending > self.window:
            self.slide()
        cached, memory = self.runner.cached_len, self.memory
        if cached >= len(memory):
            chunk = self.ids[self.view_start + cached - len(memory):]
        else:
            chunk = memory[cached:] + self.ids[self.view_start:]
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
