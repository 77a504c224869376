"""The turn tree on screen (/tree) and the numbers /goto takes.

A turn's number is given the first time its tree is numbered and never changes while the tree
lives, so a /tree, then a /retry, then /goto N still reaches the turn that /tree showed as N.
New turns get the next numbers in preorder; a tree read from a file is numbered in preorder, which
is the order of its turns in the file.

Only branches indent: a turn with one child is followed by that child on the next line at the same
depth, so a long linear session stays one column wide whatever its length.  Nothing here runs a model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from korepl import turns, width
from korepl.controls import readable

PATH_MARK, CURRENT_MARK = "●", "▶"
FIRST_WORDS = 60  # characters of a turn's new text looked at before clipping to the width

# root -> {id(turn): number}.  Keyed weakly on the root so a dropped tree (/reset, /load) is forgotten;
# turns are never removed from a live tree, so an id in here always names a turn of that tree.
_numbers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _preorder(root: turns.Turn) -> Iterator[turns.Turn]:
    """Parents before children, children in the order made (no recursion: a chain may be thousands deep)."""
    stack = [root]
    while stack:
        turn = stack.pop()
        yield turn
        stack.extend(reversed(turn.children))


def numbers(root: turns.Turn) -> dict[int, int]:
    """{id(turn): number} for every turn of the tree; turns seen for the first time get the next numbers."""
    known = _numbers.get(root)
    if known is None:
        known = _numbers[root] = {}
    for turn in _preorder(root):
        if id(turn) not in known:
            known[id(turn)] = len(known)
    return known


def find(root: turns.Turn, number: int) -> turns.Turn | None:
    """The turn numbered `number`, or None."""
    known = numbers(root)
    for turn in _preorder(root):
        if known[id(turn)] == number:
            return turn
    return None


def size(root: turns.Turn) -> int:
    return len(numbers(root))


def head(text: str, limit: int = FIRST_WORDS) -> str:
    """The first words of `text` on one line: newlines shown as ⏎, tabs as spaces."""
    text = text.strip(" ").replace("\r\n", "\n")
    cut = text[:limit].replace("\n", "⏎").replace("\t", " ")
    return cut + "…" if len(text) > limit else cut


def _alternative(turn: turns.Turn) -> str:
    """'alt i/n' for a continuation with sibling continuations, numbered as /alt numbers them."""
    if turn.kind != "generated" or turn.parent is None:
        return ""
    siblings = [t for t in turn.parent.children if t.kind == "generated"]
    if len(siblings) < 2:
        return ""
    return f" alt {siblings.index(turn) + 1}/{len(siblings)}"


def draw(root: turns.Turn, current: turns.Turn, columns: int = 80) -> list[str]:
    """The tree as lines of at most `columns` display columns: number, path mark, branches, kind, first words."""
    known = numbers(root)
    digits = len(str(len(known) - 1))
    on_path = {id(t) for t in current._chain()}
    lines = []
    # (turn, branch drawing before its own line, branch drawing before its descendants' lines)
    stack: list[tuple[turns.Turn, str, str]] = [(root, "", "")]
    while stack:
        turn, first, rest = stack.pop()
        mark = CURRENT_MARK if turn is current else PATH_MARK if id(turn) in on_path else " "
        if turn.new_text.strip():
            words = head(readable(turn.new_text))
        else:
            words = "(start)" if turn.parent is None else "(nothing added)"
        line = f"{known[id(turn)]:>{digits}} {mark} {first}{turn.kind}{_alternative(turn)}  {words}"
        lines.append(width.clip(line, columns))
        children = turn.children
        if len(children) == 1:  # a chain goes straight down: no indent
            stack.append((children[0], rest, rest))
            continue
        for i in range(len(children) - 1, -1, -1):
            last = i == len(children) - 1
            stack.append((children[i], rest + ("└─ " if last else "├─ "), rest + ("   " if last else "│  ")))
    return lines


def legend(root: turns.Turn) -> str:
    count = size(root)
    return (f"{count} turn{'s' if count != 1 else ''}; {PATH_MARK} the path to the current turn, "
            f"{CURRENT_MARK} the current turn; /goto N moves to turn N")
