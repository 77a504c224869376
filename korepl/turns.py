"""The session's turns as a tree: each node is the text after one move (a typed line, a continuation,
a picked token, an edit), stored as what it kept of its parent and what it added.

Undo walks to the parent, redo back to the child last left; a retried continuation is a sibling of
the one it replaces, so earlier versions stay as alternatives.  Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Turn:
    kind: str  # "start", "typed", "generated", "picked", "edited"
    parent: Turn | None
    keep_ids: int  # how many of the parent's ids it keeps
    new_ids: tuple[int, ...]
    keep_chars: int  # how much of the parent's text it keeps
    new_text: str
    children: list[Turn] = field(default_factory=list)
    last_child: Turn | None = None  # where /redo goes
    logits: Any = None  # next-token logits after this turn, when known (never saved)

    def ids(self) -> list[int]:
        chain = self._chain()
        ids: list[int] = []
        for turn in chain:
            ids = ids[: turn.keep_ids] + list(turn.new_ids)
        return ids

    def text(self) -> str:
        text = ""
        for turn in self._chain():
            text = text[: turn.keep_chars] + turn.new_text
        return text

    def _chain(self) -> list[Turn]:
        chain, turn = [], self
        while turn is not None:
            chain.append(turn)
            turn = turn.parent
        return chain[::-1]


def start() -> Turn:
    return Turn("start", None, 0, (), 0, "")


def grow(parent: Turn, kind: str, ids: list[int], text: str) -> Turn:
    """A child of `parent` for the state (ids, text), stored as the difference from the parent's.

    When the state is the parent's own, no child is made and `parent` is returned.
    """
    old_ids, old_text = parent.ids(), parent.text()
    if old_ids == ids and old_text == text:
        return parent
    keep_ids = common_prefix(old_ids, ids)
    keep_chars = common_prefix(old_text, text)
    child = Turn(kind, parent, keep_ids, tuple(ids[keep_ids:]), keep_chars, text[keep_chars:])
    parent.children.append(child)
    parent.last_child = child
    return child


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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


def from_json(data: dict) -> tuple[Turn, Turn]:
    """(root, current) from `to_json`'s output; ValueError when it does not hold together."""
    nodes = data["nodes"]
    turns: list[Turn] = []
    for i, node in enumerate(nodes):
        parent_index = node["parent"]
        if (parent_index is None) != (i == 0) or (parent_index is not None and not 0 <= parent_index < i):
            raise ValueError(f"turn {i} has a bad parent")
        parent = turns[parent_index] if parent_index is not None else None
        ids = node["ids"]
        if not all(isinstance(x, int) and x >= 0 for x in ids) or not isinstance(node["text"], str):
            raise ValueError(f"turn {i} has bad ids or text")
        turn = Turn(str(node["kind"]), parent, int(node["keep_ids"]), tuple(ids), int(node["keep_chars"]),
                    node["text"])
        if parent is not None:
            parent.children.append(turn)
        turns.append(turn)
    for node, turn in zip(nodes, turns):
        if node["last_child"] is not None:
            turn.last_child = turns[node["last_child"]]
    return turns[0], turns[data["current"]]


def _walk(root: Turn) -> list[Turn]:
    """Parents before children, so a file can be read in one pass."""
    order, stack = [], [root]
    while stack:
        turn = stack.pop()
        order.append(turn)
        stack.extend(reversed(turn.children))
    return order
