"""Token ids in, printable text pieces out.

`StreamDecoder` turns a growing list of ids into pieces whose concatenation equals
decode(context + new) minus decode(context), never ending a piece in half a character: it decodes a
short window of ids and holds back while the window's text ends in U+FFFD (a multi-byte character
split across tokens).  `stop_scan` says how much of a text is safe to show when it may run into a stop
string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
# Ids of context decoded before the new ones, so the first piece gets its leading space right.
LOOKBACK = 6


class StreamDecoder:
    def __init__(self, decode: Callable[[list[int]], str], context_ids: Sequence[int]):
        self._decode = decode
        self._ids = list(context_ids[-LOOKBACK:])
        self._read = len(self._ids)  # ids before this index have had their text emitted (the known prefix)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is still incomplete)."""
        self._ids.append(token_id)
        known = self._decode(self._ids[:self._read])
        full = self._decode(self._ids)
        if full.endswith(REPLACEMENT_CHAR) or len(full) <= len(known):
            return ""
        # Slide the window: the new text becomes the known prefix of the next decode.
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        return full[len(known):]

    @property
    def held(self) -> int:
        """How many pushed ids have not had their text emitted yet."""
        return len(self._ids) - self._read


def stop_scan(text: str, stops: Sequence[str]) -> tuple[int, int | None]:
    """(safe, stop_at) for `text` that may run into one of `stops`.

    stop_at: where the earliest stop string begins in `text`, or None.  safe: how many leading
    characters can be shown now, because no stop string can begin in them, whatever comes next.
    """
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return min(found), min(found)
    hold = 0
    for stop in stops:
        # The longest tail of `text` that a stop string starts with.
        for length in range(min(len(stop) - 1, len(text)), hold, -1):
            if stop.startswith(text[-length:]):
                hold = length
                break
    return len(text) - hold, None


class TextGate:
    """Holds generated text back until it is whole and cannot be the start of a hidden stop text.

    A hidden stop text (`stops`) ends generation and is never shown; a kept one (`keeps`) ends it
    right after it is written and stays.  Text that may begin a kept stop needs no holding back: it
    is shown either way.  It tracks how many of the pushed ids have had their text released
    (`shown_ids`), so that the caller can drop the rest when generation ends and keep the context
    equal to what was shown.
    """

    def __init__(self, decode: Callable[[list[int]], str], context_ids: Sequence[int], stops: Sequence[str],
                 keeps: Sequence[str] = ()):
        self._decoder = StreamDecoder(decode, context_ids)
        self._stops = tuple(stops)
        self._keeps = tuple(keeps)
        # A kept stop may begin in text already released: its last characters are searched with the new.
        self._tail_size = max((len(k) for k in self._keeps), default=1) - 1
        self._shown_tail = ""
        self._pushed = 0
        self._pending = ""  # decoded, not yet released
        self._bounds: list[tuple[int, int]] = []  # (ids pushed, length of `_pending`) where a token's text ends
        self.shown_ids = 0
        self.stopped_by: str | None = None
        self.stop_kept = False  # whether `stopped_by` is a kept stop text (shown) or a hidden one
        # The text up to the cut (before a hidden stop, through a kept one) that shares a token with
        # what follows it, so was not released: the caller re-encodes it on its own.
        self.stop_prefix = ""

    def push(self, token_id: int) -> str:
        """Add one generated id; return the text that may be shown now (often "")."""
        self._pushed += 1
        piece = self._decoder.push(token_id)
        if piece:
            self._pending += piece
            self._bounds.append((self._pushed, len(self._pending)))
        safe, hidden_at = stop_scan(self._pending, self._stops)
        kept_end, kept = self._kept_match()
        if kept is not None and (hidden_at is None or kept_end <= hidden_at):
            cut, self.stopped_by, self.stop_kept = kept_end, kept, True
        elif hidden_at is not None:
            cut = hidden_at
            self.stopped_by = min((s for s in self._stops if self._pending.find(s) == hidden_at), key=len)
        else:
            return self._release(safe)
        text = self._release(cut)
        self.stop_prefix = self._pending[:cut - len(text)]
        return text

    def _kept_match(self) -> tuple[int, str | None]:
        """(where it ends in the pending text, which) for the kept stop text that the new text completes
        first, or (0, None).  Any that ended earlier would have stopped an earlier push."""
        window = self._shown_tail + self._pending
        best: tuple[int, int] | None = None
        found = None
        for keep in self._keeps:
            at = window.find(keep, max(0, len(self._shown_tail) - len(keep) + 1))
            if at < 0:
                continue
            rank = (at + len(keep), -len(keep))  # the first to end; of those, the longest
            if best is None or rank < best:
                best, found = rank, keep
        return (best[0] - len(self._shown_tail), found) if found is not None else (0, None)

    def finish(self) -> str:
        """At a normal end, release all whole text (a stop text can no longer complete)."""
        return self._release(len(self._pending))

    def _release(self, limit: int) -> str:
        """Release the text of the longest run of whole tokens that ends at or before `limit`."""
        ids, chars = max(((n, c) for n, c in self._bounds if c <= limit), default=(self.shown_ids, 0))
        text, self._pending = self._pending[:chars], self._pending[chars:]
        self._bounds = [(n, c - chars) for n, c in self._bounds if c > chars]
        self.shown_ids = ids
        if self._tail_size:
            self._shown_tail = (self._shown_tail + text)[-self._tail_size:]
        return text
