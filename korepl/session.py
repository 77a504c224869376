"""The session owns the truth: the context's token ids and the KV cache that matches them.

Feeding text encodes only that text and leaves it pending; the next forward pass runs the model over
only the pending tokens, with the cache.  Generating is one forward pass over one token per step.
The model sees a window of the context (`view_start` onwards): when the next step would overflow its
positions, the view slides to the most recent part and the cache is rebuilt with one prefill, because
learned absolute positions (KoGPT2's) cannot be shifted.  The full context is never lost.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from korepl import sampling, turns
from korepl.errors import UserError
from korepl.controls import CHAT_END, CHAT_SYSTEM, CHAT_USER, Controls, Vocabulary, resolve
from korepl.loading import LoadedModel
from korepl.runner import make_runner
from korepl.settings import Settings
from korepl.stream import TextGate

# A mid-word join re-encodes the last word with the new text; words longer than this are left alone.
MAX_REJOIN_TOKENS = 16
# Tokens of recent text checked for a banned word that the chosen token would complete.
BAN_LOOKBACK = 16
# How many picks in a row may be turned away for writing a banned word (in practice one or two are).
MAX_BAN_REPICKS = 64
# Turns whose next-token logits are kept, so that undo, redo and /alt between recent turns run no model.
# Bounded: a logits vector is 200 KB at KoGPT2's vocabulary, too much to keep for every turn of a long session.
LOGITS_KEPT = 8


@dataclass(frozen=True)
class Step:
    """One generated token and the text that became safe to show with it (often the token's own)."""

    token_id: int
    text: str
    probability: float


class SessionError(UserError):
    """A move that cannot be made now (nothing to undo, no such alternative); the message is for the user."""


@dataclass(frozen=True)
class Candidate:
    token_id: int
    token: str  # as the vocabulary spells it, with its '▁'
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
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.vocab = Vocabulary(loaded.tokenizer)
        self.window = loaded.window
        self.revision = 0  # counts changes worth saving (turns, moves, settings): the journal saves when it moves
        self.settings = settings  # validated against this tokenizer; `generate` follows it
        self.ids: list[int] = []  # the whole context
        self.text = ""  # the writer's text: what was fed (newlines kept) and what was generated
        self.view_start = 0  # the model sees ids[view_start:]
        self.tokens_run = 0  # tokens passed through the model so far (tests and benchmarks read it)
        self.slides = 0
        self.last_ending: Ending | None = None
        # The model and its KV cache, which holds ids[view_start : view_start + runner.cached].
        self._runner = make_runner(loaded.model, loaded.device)
        self._logits: torch.Tensor | None = None  # next-token logits after the cached ids
        self.root = self.turn = turns.start()  # the tree of turns, and where the text stands in it
        self._turn_logits: OrderedDict[turns.Turn, tuple[int, torch.Tensor]] = OrderedDict()  # recent turns only

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        """Take new settings; SettingError (nothing changed) when this tokenizer cannot follow them."""
        self.controls: Controls = resolve(self.vocab, value)
        if getattr(self, "_settings", None) is None or value.seed != self._settings.seed:
            # One random stream per seed: each continuation, retry and empty line draws on from it, so a
            # fixed seed makes a whole session reproducible without making every retry the same.
            self._generator = sampling.make_generator(value.seed)
        self._settings = value
        self.revision += 1

    # --- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids` as the writer sees it (a newline token shown as a newline)."""
        text = self.vocab.decode(ids)
        token = self.controls.newline_token
        return text.replace(token + " ", "\n").replace(token, "\n") if token else text

    def model_text(self, text: str) -> str:
        """What the model is given for `text`: newlines follow the newline setting (never <unk>)."""
        return text.replace("\r\n", "\n").replace("\n", self.controls.newline_for_model)

    # --- feeding --------------------------------------------------------------------------------

    def feed(self, text: str) -> int:
        """Append `text` to the context; returns how many tokens it became.  Runs no model."""
        if not text:
            return 0
        model_text = self.model_text(text)
        rejoin = self._rejoin_start(model_text)
        if rejoin < len(self.ids):
            tail = self.model_text(self.decode(self.ids[rejoin:]))
            self._truncate(rejoin)
            new_ids = self.encode(tail + model_text)
        else:
            new_ids = self.encode(model_text)
        self.ids.extend(new_ids)
        self.text += text
        self._fit_view()
        return len(new_ids)

    def add_line(self, line: str) -> int:
        """Join a typed line to the text (a turn of its own), as the `join` and `mode` settings ask."""
        if self.settings.mode == "chat":
            # KoGPT2 chat turns: <usr> line <sys> answer </s>; the answer's </s> stopped it, so add it back.
            end = CHAT_END if self.ids and self.vocab.token(self.ids[-1]) != CHAT_END else ""
            added = self.feed(f"{end}{CHAT_USER}{line}{CHAT_SYSTEM}")
        else:
            if not self.text or self.text[-1:].isspace():
                separator = ""
            else:
                separator = {"newline": "\n", "space": " ", "none": ""}[self.settings.join]
            added = self.feed(separator + line)
        self._record("typed")
        return added

    def _rejoin_start(self, model_text: str) -> int:
        """Where re-encoding must start so a join inside a word tokenizes as the whole text would."""
        marker = self.vocab.word_marker
        if not self.ids or model_text[:1].isspace() or marker is None:
            return len(self.ids)
        lowest = max(self.view_start, len(self.ids) - MAX_REJOIN_TOKENS)
        for index in range(len(self.ids) - 1, lowest - 1, -1):
            if self.vocab.token(self.ids[index]).startswith(marker):
                return index
        return len(self.ids)

    def _truncate(self, length: int) -> None:
        """Drop ids from `length` on, cropping the cache to match (no model run)."""
        if length >= len(self.ids):
            return
        del self.ids[length:]
        keep_cached = max(0, length - self.view_start)
        if keep_cached < self._runner.cached:
            self._runner.crop(keep_cached)
            self._logits = None
        if length <= self.view_start:  # nothing of the view is left: look at the context from its start
            self._reset_view(0)

    # --- the model --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Tokens in the context that the model has not run over yet."""
        return len(self.ids) - self.view_start - self._runner.cached

    def next_logits(self) -> torch.Tensor:
        """Logits for the token after the context, running only what is pending (and sliding if full)."""
        if not self.ids:
            self._seed_empty_context()
        if self.pending == 0:
            if self._logits is not None:
                return self._logits
            self._runner.crop(self._runner.cached - 1)  # after a crop: re-run the last token for its logits
        if self._runner.cached + self.pending > self.window:
            self._slide()
        self._run(self.ids[self.view_start + self._runner.cached:])
        return self._logits

    def _seed_empty_context(self) -> None:
        """Nothing to continue from: start from the beginning-of-text token, as `generate` would."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise SessionError("the text is empty and this model has no beginning-of-text token: type something first")
        self.ids.append(bos)

    def _slide(self) -> None:
        keep = max(1, int(self.window * self.settings.window_keep))
        self._reset_view(len(self.ids) - keep)
        self.slides += 1

    def _fit_view(self) -> None:
        """Keep the promise that the model's view is never longer than its window (slide when it would be)."""
        if len(self.ids) - self.view_start > self.window:
            self._slide()

    def _reset_view(self, view_start: int) -> None:
        self.view_start = view_start
        self._runner.reset()
        self._logits = None

    def _run(self, chunk: list[int]) -> None:
        if not chunk:
            return
        self._logits = self._runner.run(chunk)
        self.tokens_run += len(chunk)

    def penalty_history(self) -> torch.Tensor:
        """The ids the repetition penalty counts: what the model sees, or its last `repetition_window`."""
        start = self.view_start
        if self.settings.repetition_window is not None:
            start = max(start, len(self.ids) - self.settings.repetition_window)
        return torch.tensor(self.ids[start:], dtype=torch.long, device=self.loaded.device)

    # --- generating -----------------------------------------------------------------------------

    def generate(self) -> Iterator[Step]:
        """Continue the context one token at a time, under `self.settings`.  Then `last_ending` says why it stopped.

        Text is shown only once it is whole and cannot be the start of a stop text.  When generation
        ends for any reason, Ctrl+C included, tokens whose text was not shown are dropped, so the
        context always equals what was shown.
        """
        settings, controls = self.settings, self.controls
        if not self.ids:
            self._seed_empty_context()
        generator = self._generator
        gate = TextGate(self.decode, self.ids, controls.stop_texts)
        start = kept = len(self.ids)  # ids before `kept` are shown
        ending = Ending("interrupted")
        try:
            self.next_logits()
            self._remember_logits()  # so that undoing this continuation needs no model run
            while len(self.ids) - start < settings.max_new_tokens:
                choice = self._choose(generator, new_tokens=len(self.ids) - start)
                if choice.token_id in controls.stop_ids:
                    ending = Ending("stop-token", self.vocab.token(choice.token_id))
                    break
                self.ids.append(choice.token_id)
                text = gate.push(choice.token_id)
                kept = start + gate.shown_ids
                if text:
                    yield self._show(Step(choice.token_id, text, choice.probability))
                if gate.stopped_by is not None:
                    ending = Ending("stop-text", gate.stopped_by)
                    break
            else:
                ending = Ending("max-tokens")
            if ending.reason == "stop-text":
                # The stop text began inside a token: keep the text before it, re-encoded on its own.
                self._truncate(kept)
                if gate.stop_prefix:
                    self.feed(gate.stop_prefix)
                    kept = len(self.ids)
                    yield Step(self.ids[-1], gate.stop_prefix, 1.0)
            else:
                text = gate.finish()
                kept = start + gate.shown_ids
                if text:
                    yield self._show(Step(self.ids[-1], text, 1.0))
        finally:
            self._truncate(kept)
            self._fit_view()
            self.last_ending = Ending(ending.reason, ending.detail, len(self.ids) - start)
            try:
                if ending.reason != "interrupted":
                    self.next_logits()  # run the last token now, so undoing back to here needs no model run
            finally:
                self._record("generated")

    def _bans(self, new_tokens: int) -> list[int]:
        """Ids that may not come next: repeated n-grams, banned words, stop tokens before min_new_tokens."""
        settings, controls = self.settings, self.controls
        history = self.ids[self.view_start:]
        banned = sampling.no_repeat_ngram_bans(history, settings.no_repeat_ngram_size)
        banned += sampling.bad_words_bans(history, controls.ban_sequences)
        banned += sampling.min_new_tokens_bans(new_tokens, settings.min_new_tokens, sorted(controls.stop_ids))
        banned += controls.suppress_ids
        return banned

    def _choose(self, generator, new_tokens: int) -> sampling.Choice:
        """One pick under the settings; a pick that would write a banned word some other way is picked again."""
        settings = self.settings
        banned = self._bans(new_tokens)
        logits, history = self.next_logits(), self.penalty_history()
        for _ in range(MAX_BAN_REPICKS):
            choice = sampling.choose(logits, history, settings, generator, banned)
            if not self._writes_banned_text(choice.token_id):
                break
            banned.append(choice.token_id)  # a banned word spelt some other way: pick again without it
        return choice

    def _writes_banned_text(self, token_id: int) -> bool:
        if not self.controls.ban_texts:
            return False
        tail = self.ids[-BAN_LOOKBACK:]
        before, after = self.decode(tail), self.decode(tail + [token_id])
        return any(after.count(word) > before.count(word) for word in self.controls.ban_texts)

    def _show(self, step: Step) -> Step:
        """Record shown text in the writer's text; a text's very first words get no leading space."""
        if not self.text:
            step = Step(step.token_id, step.text.lstrip(), step.probability)
        self.text += step.text
        return step

    # --- exploring: the turn tree -------------------------------------------------------------

    def _record(self, kind: str) -> None:
        """Make the current text a turn of its own (nothing when it did not change)."""
        grown = turns.grow(self.turn, kind, self.ids, self.text)
        if grown is not self.turn:
            self.turn = grown
            self.revision += 1
            self._remember_logits()

    def checkpoint(self) -> None:
        """Make text fed outside a move (feed alone) a turn of its own."""
        self._record("typed")

    def _remember_logits(self) -> None:
        if self.pending == 0 and self._logits is not None:
            self._turn_logits[self.turn] = (self.view_start, self._logits)
            self._turn_logits.move_to_end(self.turn)
            while len(self._turn_logits) > LOGITS_KEPT:
                self._turn_logits.popitem(last=False)
        else:
            self._turn_logits.pop(self.turn, None)

    def go_to(self, target: turns.Turn) -> None:
        """Make `target`'s text the context: crop the cache to what the two share; run only the rest."""
        ids = target.ids()
        common = turns.common_prefix(self.ids, ids)
        self._truncate(common)
        self.ids.extend(ids[common:])
        self.text = target.text()
        self.turn = target
        self.revision += 1
        self._fit_view()
        known = self._turn_logits.get(target)
        if self.pending == 0 and known is not None and known[0] == self.view_start:
            self._logits = known[1]  # known from when the turn was made: no model run at all

    def undo(self) -> turns.Turn:
        """Take back the last turn (a continuation, then the line before it); the cache is cropped."""
        if self.turn.parent is None:
            raise SessionError("nothing to undo")
        undone = self.turn
        self.turn.parent.last_child = undone
        self.go_to(self.turn.parent)
        return undone

    def redo(self) -> turns.Turn:
        if self.turn.last_child is None:
            raise SessionError("nothing to redo")
        self.go_to(self.turn.last_child)
        return self.turn

    def retry(self) -> Iterator[Step]:
        """Write the last continuation again under the current settings; the old one stays an alternative."""
        if self.turn.kind != "generated":
            raise SessionError("nothing to retry: the last turn is not a continuation")
        self.go_to(self.turn.parent)
        return self.generate()

    def alternatives(self) -> list[turns.Turn]:
        """The continuations written from where the last one started (after /undo: from here)."""
        base = self.turn.parent if self.turn.kind == "generated" else self.turn
        return [t for t in base.children if t.kind == "generated"]

    def switch(self, number: int) -> turns.Turn:
        """Make alternative `number` (from 1) the current continuation."""
        options = self.alternatives()
        if not options:
            raise SessionError("no alternatives here: /retry writes one")
        if not 1 <= number <= len(options):
            raise SessionError(f"there are {len(options)} alternatives: choose 1 to {len(options)}")
        self.go_to(options[number - 1])
        return self.turn

    def peek(self, count: int) -> list[Candidate]:
        """The `count` likeliest next tokens under the current settings.  Changes nothing."""
        empty = not self.ids
        try:
            logits = sampling.scores(self.next_logits(), self.penalty_history(), self.settings, self._bans(0))
        finally:
            if empty:  # next_logits started from the beginning-of-text token: take it back
                self._truncate(0)
        probs = torch.softmax(logits, dim=-1)
        values, ids = torch.topk(probs, min(count, probs.shape[-1]))
        return [Candidate(int(i), self.vocab.token(int(i)), float(p)) for p, i in zip(values, ids) if p > 0]

    def pick(self, number: int) -> Iterator[Step]:
        """Append the `number`-th likeliest next token (as /peek lists them), then continue from it."""
        candidate = self.peek(number)[number - 1]
        if candidate.token_id in self.controls.stop_ids:
            raise SessionError(f"candidate {number} is the stop token {candidate.token}: nothing to add")
        before = self.decode(self.ids[-8:])
        self.ids.append(candidate.token_id)
        piece = self.decode(self.ids[-9:])[len(before):]
        step = self._show(Step(candidate.token_id, piece, candidate.probability))
        self._record("picked")
        return self._then_generate(step)

    def _then_generate(self, first: Step) -> Iterator[Step]:
        yield first
        yield from self.generate()

    def edit(self, new_text: str) -> int:
        """Make `new_text` the text; the model runs only from the first token that changed.  Returns how many."""
        ids = self.encode(self.model_text(new_text))
        if self.ids[:1] == [self.tokenizer.bos_token_id] and ids[:1] != self.ids[:1]:
            ids = self.ids[:1] + ids  # keep a beginning-of-text token the session started from
        common = turns.common_prefix(self.ids, ids)
        self._truncate(common)
        self.ids.extend(ids[common:])
        self.text = new_text
        self._fit_view()
        self._record("edited")
        return self.pending  # what the model will re-read (more than the changed tail if the view must reset)

    def replace_state(self, settings: Settings, root: turns.Turn, current: turns.Turn, view_start: int) -> None:
        """Take a whole saved state (checked by the caller); the cache is rebuilt with one prefill."""
        self.settings = settings
        self.root, self.turn = root, current
        self.ids, self.text = current.ids(), current.text()
        self.revision += 1
        self._turn_logits.clear()
        self._reset_view(view_start)
        self._fit_view()
