"""The session's turns as a tree: each node is the text after one move (a typed line, a continuation,
a picked token, an edit), stored as what it kept of its parent and what it added.

Undo walks to the parent, redo back to the child last left; a retried continuation is a sibling of
the one it replaces, so earlier versions stay as alternatives.  Nothing here runs a model.

`from_json` reads a tree back from a file that may be damaged or hostile: it checks every node
(types, ranges, which turn may follow which) in time linear in the file's size, and raises TurnError
rather than building a tree that does not hold together.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from korepl.textin import CONTROL

# Kinds of turn a file may hold.  A "reset" (/reset, /clear) keeps nothing of its parent and adds
# nothing: an empty text that /undo can take back.
KINDS = frozenset({"start", "typed", "generated", "picked", "edited", "reset"})


class TurnError(ValueError):
    """A turn tree that does not hold together; the message says which turn and why."""


@dataclass(eq=False)
class Turn:
    kind: str  # "start", "typed", "generated", "picked", "edited", "reset"
    parent: Turn | None = field(repr=False)
    keep_ids: int  # how many of the parent's ids it keeps
    new_ids: tuple[int, ...]
    keep_chars: int  # how much of the parent's text it keeps
    new_text: str
    children: list[Turn] = field(default_factory=list, repr=False)
    last_child: Turn | None = field(default=None, repr=False)  # where /redo goes

    def ids(self) -> list[int]:
        """The whole context's ids at this turn (in time linear in the depth plus the length)."""
        return [i for piece in self._pieces("new_ids", "keep_ids") for i in piece]

    def text(self) -> str:
        return "".join(self._pieces("new_text", "keep_chars"))

    def _pieces(self, new: str, keep: str) -> list:
        """The parts of each ancestor's own addition that survive to this turn, oldest first.

        A turn's state is its parent's state cut to `keep` plus its own `new`; walking up, only the
        first `need` items of each ancestor's state are still wanted.
        """
        pieces = []
        turn, need = self, None  # None: all of this turn's state
        while turn is not None and need != 0:
            kept, own = getattr(turn, keep), getattr(turn, new)
            if need is None:
                pieces.append(own)
                need = kept
            else:
                if need > kept:
                    pieces.append(own[: need - kept])
                need = min(need, kept)
            turn = turn.parent
        return pieces[::-1]

    def _chain(self) -> list[Turn]:
        chain, turn = [], self
        while turn is not None:
            chain.append(turn)
            turn = turn.parent
        return chain[::-1]


def start() -> Turn:
    return Turn("start", None, 0, (), 0, "")


def grow(parent: Turn, kind: str, keep_ids: int, new_ids: Sequence[int], keep_chars: int, new_text: str) -> Turn:
    """A child of `parent` that keeps the first `keep_ids` ids and `keep_chars` characters of the
    parent's state and adds `new_ids` and `new_text`.  It costs what it adds, not the parent's state:
    the caller, which has that state, says what changed.
    """
    child = Turn(kind, parent, keep_ids, tuple(new_ids), keep_chars, new_text)
    parent.children.append(child)
    parent.last_child = child
    return child


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class StateText:
    """The text of the turn being visited by `states`: cut and extended in place, read from any point.

    Cutting and extending cost what they remove and add, and reading costs what is read, so a walk
    over a deep tree of long texts never copies each whole text.
    """

    def __init__(self):
        self._buffer = io.StringIO(newline="")  # no newline translation
        self.length = 0

    def tail(self, start: int = 0) -> str:
        """The text from character `start` to the end."""
        self._buffer.seek(start)
        return self._buffer.read()

    def slice(self, start: int, end: int) -> str:
        """The text from character `start` up to `end`."""
        self._buffer.seek(start)
        return self._buffer.read(max(0, end - start))

    def replace_tail(self, keep: int, new: str) -> str:
        """Keep the first `keep` characters, append `new`; returns what was cut off."""
        removed = self.tail(keep)
        self._buffer.seek(keep)
        self._buffer.truncate()
        self._buffer.write(new)
        self.length = keep + len(new)
        return removed


def states(root: Turn) -> Iterator[tuple[Turn, list[int], StateText, list[int], str]]:
    """(turn, its ids, its text, ids cut, text cut) for every turn, parents before children (as `to_json` orders them).

    "Cut" is what the turn did not keep of its parent's state: the parent's state is the turn's
    first keep_ids ids plus the ids cut, and its first keep_chars characters plus the text cut.
    One pass with one ids list and one text that are cut and extended on the way down and put back
    on the way up: time is the tree's own size plus what each turn cut, and memory the longest state
    plus what the turns on the current path cut, whatever the tree's shape (never each turn's whole
    state).  The list and text are reused: read them before asking for the next turn.
    """
    ids: list[int] = []
    text = StateText()
    stack: list[tuple[bool, Turn, list[int], str]] = [(True, root, [], "")]
    while stack:
        entering, turn, dropped_ids, dropped_text = stack.pop()
        if entering:
            removed_ids = ids[turn.keep_ids:]
            del ids[turn.keep_ids:]
            ids.extend(turn.new_ids)
            removed_text = text.replace_tail(turn.keep_chars, turn.new_text)
            yield turn, ids, text, removed_ids, removed_text
            stack.append((False, turn, removed_ids, removed_text))
            stack.extend((True, child, [], "") for child in reversed(turn.children))
        else:  # leaving: give the parent its state back
            del ids[turn.keep_ids:]
            ids.extend(dropped_ids)
            text.replace_tail(turn.keep_chars, dropped_text)


# --- as JSON ---------------------------------------------------------------------------------------


def to_json(root: Turn, current: Turn) -> dict:
    order = _walk(root)
    index = {id(t): i for i, t in enumerate(order)}
    nodes = [
        {
            "kind": t.kind,
            "parent": index[id(t.parent)] if t.parent is not None else None,
            "keep_ids": t.keep_ids,
            "ids": list(t.new_ids),
            "keep_chars": t.keep_chars,
            "text": t.new_text,
            "last_child": index[id(t.last_child)] if t.last_child is not None else None,
        }
        for t in order
    ]
    return {"nodes": nodes, "current": index[id(current)]}


def from_json(data: Any, vocab_size: int, allowed_controls: str = "") -> tuple[Turn, Turn]:
    """(root, current) from `to_json`'s output, or TurnError when it does not hold together.

    Checked: each node's kind; its parent comes earlier (only the first node, a "start", has none);
    it keeps no more of its parent's ids and text than the parent has (a "reset" keeps and adds
    none); its ids are whole numbers in [0, vocab_size); its text is text (no surrogates, no control
    characters but newline, tab and `allowed_controls`); its last_child is one of its own children; `current` is one of the nodes.
    Time and memory are linear in the size of `data` (lengths are carried from parent to child).
    """
    if not isinstance(data, dict):
        raise TurnError("the turn tree is not a table")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise TurnError("the turn tree has no turns")
    bad_char = _bad_characters(allowed_controls)
    turns: list[Turn] = []
    sizes: list[tuple[int, int]] = []  # (ids, characters) of each turn's whole state
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            raise TurnError(f"turn {i} is not a table")
        kind = _get(node, i, "kind", str)
        parent_index = _get(node, i, "parent", int, none=True)
        if i == 0:
            if parent_index is not None or kind != "start":
                raise TurnError("the first turn must be the start, with no parent")
            parent, parent_size = None, (0, 0)
        else:
            if parent_index is None or not 0 <= parent_index < i:
                raise TurnError(f"turn {i} has a bad parent (it must be an earlier turn)")
            if kind not in KINDS or kind == "start":
                raise TurnError(f"turn {i} is of an unknown kind {_short(kind)}")
            parent, parent_size = turns[parent_index], sizes[parent_index]
        keep_ids = _get(node, i, "keep_ids", int)
        if not 0 <= keep_ids <= parent_size[0]:
            raise TurnError(f"turn {i} keeps {_short(keep_ids)} ids of its parent's {parent_size[0]}")
        keep_chars = _get(node, i, "keep_chars", int)
        if not 0 <= keep_chars <= parent_size[1]:
            raise TurnError(f"turn {i} keeps {_short(keep_chars)} characters of its parent's {parent_size[1]}")
        ids = _get(node, i, "ids", list)
        if kind == "reset" and (keep_ids or keep_chars or ids or node.get("text")):
            raise TurnError(f"turn {i} is a reset, which must keep and add nothing")
        if not all(type(x) is int and 0 <= x < vocab_size for x in ids):
            raise TurnError(f"turn {i} has token ids that are not in the vocabulary (0 to {vocab_size - 1})")
        text = _get(node, i, "text", str)
        found = bad_char.search(text)
        if found:
            raise TurnError(f"turn {i} holds a character that is not text ({ascii(found.group())})")
        _get(node, i, "last_child", int, none=True)  # its type; which turn it names is checked below
        size = (keep_ids + len(ids), keep_chars + len(text))
        turn = Turn(kind, parent, keep_ids, tuple(ids), keep_chars, text)
        if parent is not None:
            parent.children.append(turn)
        turns.append(turn)
        sizes.append(size)
    for i, (node, turn) in enumerate(zip(nodes, turns)):
        last = node["last_child"]
        if last is not None:
            if not 0 <= last < len(turns) or turns[last].parent is not turn:
                raise TurnError(f"turn {i} redoes to turn {_short(last)}, which is not one of its children")
            turn.last_child = turns[last]
    current = data.get("current")
    if type(current) is not int or not 0 <= current < len(turns):
        raise TurnError(f"the current turn {_short(current)} is not one of the {len(turns)} turns")
    return turns[0], turns[current]


_MISSING = object()


def _get(node: dict, i: int, key: str, kind: type, none: bool = False) -> Any:
    """node[key], which must be of type `kind` exactly (True is not a number), or None when `none`."""
    value = node.get(key, _MISSING)
    if value is _MISSING:
        raise TurnError(f"turn {i} has no '{key}'")
    if (value is None and none) or type(value) is kind:
        return value
    wanted = {int: "a whole number", str: "a text", list: "a list"}[kind] + (" or null" if none else "")
    raise TurnError(f"turn {i}: '{key}' must be {wanted} (got {_short(value)})")


def _short(value: Any, limit: int = 40) -> str:
    """A value as it may appear in a one-line message: JSON's words, cut short."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if type(value) is int:
        return str(value) if abs(value) < 10**limit else "a number too large to show"
    shown = ascii(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


@functools.lru_cache(maxsize=8)
def _bad_characters(allowed: str) -> re.Pattern[str]:
    """Surrogates, and the control characters textin drops (all but tab, newline and `allowed`)."""
    controls = "".join(chr(c) for c in range(0xA0) if CONTROL.match(chr(c)) and chr(c) not in allowed)
    return re.compile("[\ud800-\udfff" + re.escape(controls) + "]")


def _walk(root: Turn) -> list[Turn]:
    """Parents before children, so a file can be read in one pass."""
    order, stack = [], [root]
    while stack:
        turn = stack.pop()
        order.append(turn)
        stack.extend(reversed(turn.children))
    return order
