"""The session owns the truth: the writer's text, the turn tree, and the moves between its turns.

Feeding text encodes only that text; the context (korepl/context.py) keeps the ids and the KV cache in
step and runs only what is pending.  Generating is one forward pass over one token per step, each
token chosen by the pick step (korepl/sampling.py) built from the settings; or, with a serving engine
as the model (korepl.backend), the token ids come from its stream over what the model sees (memory +
view), and everything after the choice (stops, the text gate, turns, the window) is the same code.  A move (undo, redo,
retry, /alt, pick, edit) makes a turn's ids the context's with `Context.become`; every change worth
keeping becomes a turn of the tree (korepl/turns.py), which holds ids and text, never tensors.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from korepl import sampling, turns
from korepl.errors import UserError
from korepl.context import Context
from korepl.controls import CHAT_END, CHAT_SYSTEM, CHAT_USER, Controls, Vocabulary, readable, resolve
from korepl.loading import LoadedModel, apply_threads
from korepl.settings import SettingError, Settings
from korepl.stats import Stats
from korepl.stream import REPLACEMENT_CHAR, StreamDecoder, TextGate

# A mid-word join re-encodes the last word with the new text; words longer than this are left alone.
MAX_REJOIN_TOKENS = 16


@dataclass(frozen=True)
class Step:
    """One generated token and the text that became safe to show with it (often the token's own)."""

    token_id: int
    text: str
    probability: float


class MemoryTooLong(SettingError):
    """A memory longer than half the model's window (a SettingError: nothing changed)."""


class SessionError(UserError):
    """A move that cannot be made now (nothing to undo, no such alternative); the message is for the user."""


@dataclass(frozen=True)
class Candidate:
    """A next token as /peek lists it."""

    token_id: int
    token: str  # as the vocabulary spells it, with its '▁'
    text: str  # how it reads: '▁' (a word start) as a visible space '␣'
    chance: float  # of being picked now under the settings; 0 outside the sampling set
    probability: float  # the model's, after penalties, bans and temperature
    outside: str = ""  # what left it out of the sampling set ("top-k 3"), or "" when in it

    @property
    def in_set(self) -> bool:
        return not self.outside


@dataclass(frozen=True)
class Ending:
    """Why the last generation ended: 'stop-token', 'stop-text', 'max-tokens' or 'interrupted'."""

    reason: str
    detail: str = ""
    new_tokens: int = 0
    kept: bool = False  # a 'stop-text' ending at a kept stop text (stop_keep), which stays in the text


class Session:
    def __init__(self, loaded: LoadedModel, settings: Settings):
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.vocab = Vocabulary(loaded.tokenizer)
        self.window = loaded.window
        self.revision = 0  # counts changes worth saving (turns, moves, settings): the journal saves when it moves
        self.context = Context(loaded)  # the ids, the model's view of them and the KV cache
        self.settings = settings  # validated against this tokenizer; `generate` follows it
        self.text = ""  # the writer's text: what was fed (newlines kept) and what was generated
        self.last_ending: Ending | None = None
        self.last_stats: Stats | None = None  # the last continuation's figures (/stats), None before the first
        self.root = self.turn = turns.start()  # the tree of turns, and where the text stands in it
        self._turn_size = (0, 0)  # the current turn's (ids, characters)
        self._unchanged_chars = 0  # leading characters of the text as they are in the current turn

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        """Take new settings; SettingError (nothing changed) when this tokenizer cannot follow them."""
        if self.loaded.remote is not None:  # a serving engine runs the model: refuse what it cannot honour
            from korepl import backend

            for name, why in backend.refusals(self.loaded.remote.engine, value):
                raise SettingError(backend.refusal_message(self.loaded, name, why))
        controls = resolve(self.vocab, value)
        memory = self.encode_memory(value.memory, controls)  # may refuse, so before anything changes
        self.controls: Controls = controls
        # The pick step is built once here, not per token: the transforms the settings ask for, in order.
        decode = functools.partial(self.vocab.shown, newline_token=controls.newline_token)
        self._pick = sampling.PickStep(value, controls, decode, self.loaded.device)
        if getattr(self, "_settings", None) is None or value.seed != self._settings.seed:
            # One random stream per seed: each continuation, retry and empty line draws on from it, so a
            # fixed seed makes a whole session reproducible without making every retry the same.
            self._generator = sampling.make_generator(value.seed)
        self.context.keep = value.window_keep
        if getattr(self, "_settings", None) is None or value.threads != self._settings.threads:
            apply_threads(value.threads)  # 0 gives torch's own default back
        self.context.set_memory(memory)  # crops the cache to what old and new memory share (nothing if equal)
        self._settings = value
        self.revision += 1

    def encode_memory(self, memory: str, controls: Controls) -> list[int]:
        """The memory's ids: on a line of its own above the text (as KoboldAI puts it), newlines as fed text's."""
        if not memory:
            return []
        text = self.model_text(memory, controls)
        # A newline the model can read ends it; a newline given as a space is left out, since the
        # text's first word brings its own word marker ('▁') and a second one would be noise.
        if not memory[-1:].isspace() and controls.newline_for_model != " ":
            text += controls.newline_for_model
        ids = self.encode(text)
        # At most half the window, so that a slide always leaves the text room to be seen.
        if len(ids) > self.window // 2:
            raise MemoryTooLong(f"memory is {len(ids)} tokens; at most {self.window // 2} (half the model's window)")
        return ids

    @property
    def memory_tokens(self) -> int:
        """How many tokens of memory the model sees before the text (0 = none)."""
        return len(self.context.memory)

    # --- the context, as the rest of korepl reads it -------------------------------------------------

    @property
    def ids(self) -> list[int]:
        """The whole context's ids (the model sees ids[view_start:])."""
        return self.context.ids

    @property
    def view_start(self) -> int:
        return self.context.view_start

    @property
    def slides(self) -> int:
        return self.context.slides

    @property
    def tokens_run(self) -> int:
        return self.context.tokens_run

    @property
    def pending(self) -> int:
        """Tokens in the context that the model has not run over yet."""
        return self.context.pending

    # --- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def decode(self, ids: list[int]) -> str:
        """The text of `ids` as the writer sees it (a newline token shown as a newline)."""
        return self.vocab.shown(ids, self.controls.newline_token)

    @staticmethod
    def readable(text: str) -> str:
        """`text` as the writer reads it: chat markup (<usr>, <sys>, </s>) hidden (see controls.readable)."""
        return readable(text)

    def model_text(self, text: str, controls: Controls | None = None) -> str:
        """What the model is given for `text`: newlines follow the newline setting (never <unk>)."""
        return text.replace("\r\n", "\n").replace("\n", (controls or self.controls).newline_for_model)

    # --- feeding --------------------------------------------------------------------------------

    def feed(self, text: str) -> int:
        """Append `text` to the context; returns how many tokens it became.  Runs no model."""
        if not text:
            return 0
        model_text = self.model_text(text)
        rejoin = self._rejoin_start(model_text)
        if rejoin < len(self.ids):
            new_ids = self.encode(self.model_text(self.decode(self.ids[rejoin:])) + model_text)
        else:
            new_ids = self.encode(model_text)
        self.context.replace_tail(rejoin, new_ids)
        self.text += text
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

    # --- the model --------------------------------------------------------------------------------

    def next_logits(self) -> torch.Tensor:
        """Logits for the token after the context, running only what is pending (and sliding if full)."""
        if not self.ids:
            self._seed_empty_context()
        return self.context.next_logits()

    def _seed_empty_context(self) -> None:
        """Nothing to continue from: start from the beginning-of-text token, as `generate` would."""
        if self.context.memory:  # the memory is a start of its own: continue it, not a new document
            return
        bos = self.tokenizer.bos_token_id
        if bos is None:
            raise SessionError("the text is empty and this model has no beginning-of-text token: type something first")
        self.context.append(bos)

    def penalty_history(self) -> torch.Tensor:
        """The ids the repetition penalty counts: what the model sees, or its last `repetition_window`."""
        # The text's view only, never the memory (as the pick step's penalty and n-gram bans, which read
        # ids[view_start:]): penalising the premise's own names would push the model away from them.
        ids = sampling.penalty_ids(self.ids, self.view_start, self.settings.repetition_window)
        return torch.tensor(ids, dtype=torch.long, device=self.loaded.device)

    # --- generating -----------------------------------------------------------------------------

    def generate(self) -> Iterator[Step]:
        """Continue the context one token at a time, under `self.settings`.  Then `last_ending` says why it stopped.

        Text is shown only once it is whole and cannot be the start of a stop text.  When generation
        ends for any reason, Ctrl+C included, tokens whose text was not shown are dropped, so the
        context always equals what was shown.
        """
        measure = self.last_stats = Stats()  # the figures /stats and --verbose show
        settings, controls, context, pick = self.settings, self.controls, self.context, self._pick
        if not self.ids:
            self._seed_empty_context()
        generator = self._generator
        gate = TextGate(self.decode, self.ids, controls.stop_texts, controls.keep_texts)
        start = kept = len(self.ids)  # ids before `kept` are shown
        ending = Ending("interrupted")
        # Where the token ids come from: the pick step over this process's logits, or a serving engine's stream.
        choices = self._remote_choices(start) if self.loaded.remote is not None else \
            self._local_choices(start, pick, generator)
        try:
            ran = context.tokens_run
            context.next_logits()
            measure.prefilled(context.tokens_run - ran)  # only what the cache lacked: the prompt eval of Ollama
            context.remember(self.turn)  # so that undoing this continuation needs no model run
            while len(self.ids) - start < settings.max_new_tokens:
                token_id, probability = next(choices)
                if token_id in controls.stop_ids:
                    ending = Ending("stop-token", self.vocab.token(token_id))
                    break
                context.append(token_id)
                measure.token()
                text = gate.push(token_id)
                kept = start + gate.shown_ids
                if text:
                    yield self._append_text(Step(token_id, text, probability))
                if gate.stopped_by is not None:
                    ending = Ending("stop-text", gate.stopped_by, kept=gate.stop_kept)
                    break
            else:
                ending = Ending("max-tokens")
            if ending.reason == "stop-text":
                # The cut (a hidden stop's start, a kept stop's end) fell inside a token: keep the text
                # up to it, re-encoded on its own, so the ids say exactly what was shown.
                context.truncate(kept)
                prefix = gate.stop_prefix if self.text else gate.stop_prefix.lstrip()  # as _append_text does
                if prefix:
                    self.feed(prefix)
                    kept = len(self.ids)
                    yield Step(self.ids[-1], prefix, 1.0)
            else:
                text = gate.finish()
                kept = start + gate.shown_ids
                if text:
                    yield self._append_text(Step(self.ids[-1], text, 1.0))
        except UserError as exc:  # the serving engine failed mid-answer: what was shown stays
            ending = Ending("failed", str(exc))
            raise
        finally:
            choices.close()  # a remote stream's connection closes at once (the engine stops generating)
            context.truncate(kept)
            context.fit_view()
            self.last_ending = Ending(ending.reason, ending.detail, len(self.ids) - start, ending.kept)
            measure.finish(len(self.ids) - start)
            try:
                if ending.reason not in ("interrupted", "failed"):
                    self.next_logits()  # run the last token now, so undoing back to here needs no model run
            finally:
                self._record("generated")

    def _local_choices(self, start: int, pick, generator) -> Iterator[tuple[int, float]]:
        """(token id, probability) after (token id, ...): the pick step over this process's logits."""
        context = self.context
        while True:
            logits = context.next_logits()  # first: it may slide the view
            choice = pick(logits, sampling.At(self.ids, context.view_start, len(self.ids) - start), generator)
            yield choice.token_id, choice.probability

    def _remote_request(self, settings: Settings, draw: bool = True, **extra) -> dict:
        """The sampling part of a request to the serving engine, as korepl's own decoding means it.

        `draw`: the request's seed is drawn from the session's random stream (as a local pick draws);
        False (peek, which changes nothing) leaves the stream where it is.
        """
        from korepl.settings import TOP_K_MAX

        greedy = settings.greedy
        seed = None  # greedy draws nothing
        if not greedy:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator)) if draw else 0
        return dict(temperature=0.0 if greedy else settings.temperature,
                    top_k=1 if greedy else 0 if settings.top_k >= TOP_K_MAX else settings.top_k,
                    top_p=1.0 if greedy else settings.top_p, min_p=0.0 if greedy else settings.min_p,
                    repetition_penalty=settings.repetition_penalty, repetition_window=settings.repetition_window,
                    seed=seed, ban_ids=sorted(self.controls.suppress_ids), **extra)

    def _remote_choices(self, start: int) -> Iterator[tuple[int, float]]:
        """(token id, probability) after (token id, ...): a serving engine's stream over what the model sees.

        The context counts what the engine's prompt cache holds (korepl.runner.RemoteRunner), so the
        window slides exactly when it would here; a stream asks for no more than the window's room,
        and a new one starts from the slid view.  The engine's own end of text (when it is not a stop)
        ends a stream too; korepl then goes on with a new one, as its own decoding would.
        """
        settings, context, remote = self.settings, self.context, self.loaded.remote
        while True:
            context.next_logits()  # no model run here: counts, and slides the view when the window is full
            seen = context.seen()
            done = len(self.ids) - start
            wanted = min(settings.max_new_tokens - done, self.window + 1 - len(seen))
            stream = remote.stream(seen, max(1, wanted), stop=sorted(self.controls.stop_ids),
                                   n_probs=1 if settings.probs else 0,
                                   min_tokens=max(0, settings.min_new_tokens - done),
                                   **self._remote_request(settings))
            got = 0
            with contextlib.closing(stream):
                for token in stream:
                    got += 1
                    yield token.id, 1.0 if token.probability is None else token.probability
            if not got:  # llama.cpp dropped a token held back from its stream (half a character): ask whole
                whole = remote.stream(seen, 1, stop=sorted(self.controls.stop_ids), n_probs=1 if settings.probs else 0,
                                      min_tokens=max(0, settings.min_new_tokens - done), streamed=False,
                                      **self._remote_request(settings))
                token = next(whole, None)
                if token is None:
                    from korepl.remote import RemoteError, shown

                    raise RemoteError(f"{shown(remote.engine.base_url)}: answered with no tokens; see the server's log")
                yield token.id, 1.0 if token.probability is None else token.probability

    def _append_text(self, step: Step) -> Step:
        """Add a step's text to the writer's text; a text's very first words get no leading space."""
        if not self.text:
            step = Step(step.token_id, step.text.lstrip(), step.probability)
        self.text += step.text
        return step

    # --- exploring: the turn tree -------------------------------------------------------------

    def _record(self, kind: str) -> None:
        """Make the current text a turn of its own (nothing when it did not change).

        The turn is stored as what changed since the current turn, which the context and the text
        tracked on the way: no turn's whole state is rebuilt.
        """
        keep_ids, keep_chars = self.context.unchanged, self._unchanged_chars
        if (keep_ids, keep_chars) == self._turn_size == (len(self.ids), len(self.text)):
            return
        self._at_turn(turns.grow(self.turn, kind, keep_ids, self.ids[keep_ids:], keep_chars, self.text[keep_chars:]))
        self.context.remember(self.turn)

    def _at_turn(self, turn: turns.Turn) -> None:
        """The context and text now are `turn`'s: start tracking changes from it."""
        self.turn = turn
        self.revision += 1
        self.context.mark()
        self._unchanged_chars = len(self.text)
        self._turn_size = (len(self.ids), len(self.text))

    def checkpoint(self) -> None:
        """Make text fed outside a move (feed alone) a turn of its own."""
        self._record("typed")

    def go_to(self, target: turns.Turn) -> None:
        """Make `target`'s text the context: the cache is cropped to what the two share; only the rest runs."""
        self.context.become(target.ids())
        self.text = target.text()
        self._at_turn(target)
        self.context.recall(target)  # its logits, when known from when the turn was made: no model run at all

    def visit(self, target: turns.Turn) -> None:
        """Go to any turn of the tree (/goto): /redo from each turn above it then leads back down to it."""
        self.checkpoint()  # text fed outside a turn stays reachable in the tree
        turn = target
        while turn.parent is not None:
            turn.parent.last_child = turn
            turn = turn.parent
        self.go_to(target)

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
        """Up to `count` next tokens: the sampling set by chance of being picked, then the likeliest
        tokens outside it by probability.  Changes nothing."""
        if self.loaded.remote is not None:
            return self._remote_peek(count)
        empty = not self.ids
        try:
            scores = self._pick.scores(self.next_logits(), sampling.At(self.ids, self.view_start))
        finally:
            if empty:  # next_logits started from the beginning-of-text token: take it back
                self.context.truncate(0)
        scores = scores.float().cpu()
        probs = torch.softmax(scores, dim=-1)
        chosen = sampling.sampling_set(scores, self.settings)  # what a pick would choose from, and how likely

        def candidate(token_id: int, chance: float, outside: str = "") -> Candidate:
            token = self.vocab.token(token_id)
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in token.replace("▁", "␣"))
            return Candidate(token_id, token, text, chance, float(probs[token_id]), outside)

        listed = [candidate(int(i), float(c)) for i, c in zip(chosen.ids[:count], chosen.chances[:count])]
        members = set(chosen.ids.tolist())
        # The set is a prefix of the best-first order, so a token's rank there says which filter left it out.
        order = torch.topk(scores, min(count + len(members), scores.shape[-1])).indices.tolist()
        for rank, token_id in enumerate(order):
            if len(listed) >= count:
                break
            if token_id not in members and probs[token_id] > 0:  # banned tokens (probability 0) are never offered
                listed.append(candidate(token_id, 0.0, chosen.why_outside(rank)))
        return listed

    def _remote_peek(self, count: int) -> list[Candidate]:
        """/peek from a serving engine: one token's top-N, as llama.cpp gives them.

        Sampling: the engine's post-sampling probabilities (after penalties, top-k, top-p, min-p and
        temperature): each is the chance of being picked now, and the model p column repeats it.
        Greedy: the engine's pick has chance 1; the probabilities are a plain softmax of the model's
        logits (before the repetition penalty, which llama.cpp applies after it reports them).
        Special tokens korepl never writes are left out.
        """
        if not self.ids and not self.context.memory:
            self._seed_empty_context()
            empty = True
        else:
            empty = False
        try:
            self.context.next_logits()  # counts; slides the view if the next token would not fit
            seen = self.context.seen()
            suppressed = self.controls.suppress_ids
            stream = self.loaded.remote.stream(seen, 1, n_probs=min(100, count + len(suppressed)), streamed=False,
                                               **self._remote_request(self.settings, draw=False))
            with contextlib.closing(stream):
                token = next(iter(stream), None)
        finally:
            if empty:
                self.context.truncate(0)
        if token is None:
            return []
        greedy = self.settings.greedy

        def candidate(token_id: int, p: float) -> Candidate:
            spelt = self.vocab.token(token_id)
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in spelt.replace("▁", "␣"))
            if greedy:
                chosen = token_id == token.id
                return Candidate(token_id, spelt, text, 1.0 if chosen else 0.0, p, "" if chosen else "greedy's choice")
            return Candidate(token_id, spelt, text, p, p, "" if p > 0 else "the server's sampling set")

        listed = [candidate(i, p) for i, p in token.top if i not in suppressed]
        if greedy and all(c.token_id != token.id for c in listed):  # the penalty lifted one from below the top-N
            listed.append(candidate(token.id, token.probability or 0.0))
        listed.sort(key=lambda c: (not c.in_set, -c.chance, -c.probability))
        return listed[:count]

    def pick(self, number: int) -> Iterator[Step]:
        """Append the `number`-th likeliest next token (as /peek lists them), then continue from it."""
        candidates = self.peek(number)
        if number > len(candidates):
            raise SessionError(f"there are {len(candidates)} candidates: choose 1 to {len(candidates)}")
        candidate = candidates[number - 1]
        if candidate.token_id in self.controls.stop_ids:
            raise SessionError(f"candidate {number} is the stop token {candidate.token}: nothing to add")
        piece = StreamDecoder(self.decode, self.ids).push(candidate.token_id)
        if not piece and REPLACEMENT_CHAR in self.decode([candidate.token_id]):
            # Its text would be half a character, which nothing shown may end in.
            raise SessionError(f"candidate {number} ({candidate.token}) is only part of a character: pick another")
        self.context.append(candidate.token_id)
        step = self._append_text(Step(candidate.token_id, piece, candidate.probability))
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
        self.context.become(ids)
        self._unchanged_chars = min(self._unchanged_chars, turns.common_prefix(self.text, new_text))
        self.text = new_text
        self._record("edited")
        return self.pending  # what the model will re-read (more than the changed tail if the view must reset)

    def reset(self) -> turns.Turn:
        """Clear the text as a turn of its own ("reset": no ids, no text), so /undo brings it back.

        The settings (and the memory) stay.  SessionError when there is nothing to clear.
        """
        self.checkpoint()  # text fed outside a move becomes a turn first, so undoing the reset finds it
        if not self.ids and not self.text:
            raise SessionError("the text is already empty")
        self.context.become([])
        self._unchanged_chars = 0
        self.text = ""
        self._record("reset")
        return self.turn

    def replace_state(self, settings: Settings, root: turns.Turn, current: turns.Turn, view_start: int) -> None:
        """Take a whole saved state (checked by the caller); the cache is rebuilt with one prefill."""
        self.settings = settings
        self.root = root
        self.context.restore(current.ids(), view_start)
        self.text = current.text()
        self._at_turn(current)
