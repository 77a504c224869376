"""/tree and /goto on real sessions over the demo model: the drawing, the numbers, and exact moves."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks.fixtures import drain
from korepl import commands, tree, width
from test_commands import SessionState

LINE = re.compile(r"^ *(?P<number>\d+) (?P<mark>[●▶ ]) (?P<graph>(?:[│├└─ ]{3})*)"
                  r"(?P<kind>[a-z]+)(?P<alt> alt \d+/\d+)?  ")


def branching(demo, new_session, **changes):
    """A session with three alternatives of one continuation, a second line, an undo and a third line."""
    session = new_session(demo, max_new_tokens=6, seed=1, stop=(), **changes)
    session.add_line("대한민국의 모든 국민은")
    drain(session)
    drain(session.retry())
    drain(session.retry())
    session.add_line("국가는 전통문화의")
    drain(session)
    session.undo()
    session.undo()
    session.add_line("헌법 제1조")
    drain(session)
    return session


def every_turn(root):
    found, stack = [], [root]
    while stack:
        turn = stack.pop()
        found.append(turn)
        stack.extend(turn.children)
    return found


def parsed(lines):
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches) if not m]
    return matches


def test_tree_draws_every_turn_once_with_branches_path_and_alternatives(demo, new_session):
    session = branching(demo, new_session)
    lines = tree.draw(session.root, session.turn)
    rows = parsed(lines)
    turns_by_number = {tree.numbers(session.root)[id(t)]: t for t in every_turn(session.root)}
    assert sorted(int(r["number"]) for r in rows) == list(range(len(turns_by_number))) == list(range(9))
    path = {id(t) for t in session.turn._chain()}
    for row in rows:
        turn = turns_by_number[int(row["number"])]
        assert row["kind"] == turn.kind
        expected = "▶" if turn is session.turn else "●" if id(turn) in path else " "
        assert row["mark"] == expected, row.string
    assert [r["mark"] for r in rows].count("▶") == 1
    # The three continuations of the first line are alternatives 1 to 3, as /alt numbers them.
    alts = [r for r in rows if r["alt"]]
    assert [r["alt"] for r in alts] == [" alt 1/3", " alt 2/3", " alt 3/3"]
    assert [r["graph"] for r in alts] == ["├─ ", "├─ ", "└─ "]
    # The third alternative holds two lines: a branch inside a branch indents once more.
    assert "   ├─ " in lines[5] and "   └─ " in lines[7]
    assert "국민은" in lines[1] and "⏎국가는 전통문화의" in lines[5]  # first words, newline shown as ⏎
    assert all("\n" not in line for line in lines)


def test_a_long_chain_does_not_indent(demo, new_session):
    session = new_session(demo)
    for i in range(300):
        session.add_line(f"{i}번째 줄")
    lines = tree.draw(session.root, session.turn)
    rows = parsed(lines)
    assert len(rows) == 301 and all(r["graph"] == "" for r in rows)
    assert rows[-1]["mark"] == "▶" and all(r["mark"] == "●" for r in rows[:-1])
    assert lines[-1].endswith("⏎299번째 줄")


@pytest.mark.parametrize("columns", [24, 31, 80])
def test_lines_are_clipped_to_the_width_counting_hangul_as_two(demo, new_session, columns):
    session = branching(demo, new_session)
    session.add_line("가나다라마바사아자차카타파하" * 5)
    lines = tree.draw(session.root, session.turn, columns)
    assert all(width.width(line) <= columns for line in lines)
    assert lines[-1].endswith("…")
    assert width.width(lines[-1]) in (columns - 1, columns)  # cut short by at most half a wide character


def test_numbers_stay_when_the_tree_grows(demo, new_session):
    session = branching(demo, new_session)
    before = dict(tree.numbers(session.root))
    session.visit(tree.find(session.root, 2))  # into the first alternative, then grow it
    session.add_line("새 줄")
    drain(session)
    after = tree.numbers(session.root)
    assert all(after[key] == number for key, number in before.items())
    assert sorted(after.values()) == list(range(11))
    assert tree.find(session.root, 10) is session.turn


def test_goto_every_turn_gives_its_exact_text_ids_and_logits(demo, new_session):
    session = branching(demo, new_session)
    state = SessionState(session)
    for number in reversed(range(tree.size(session.root))):
        target = tree.find(session.root, number)
        reply = commands.run_command(state, f"/goto {number}")
        assert not reply.error and reply.lines[0].startswith(f"at turn {number} ")
        assert session.turn is target
        assert session.text == target.text() and session.ids == target.ids()
        logits = session.next_logits()
        fresh = new_session(demo, max_new_tokens=6, seed=1, stop=())
        fresh.context.become(target.ids())
        torch.testing.assert_close(logits, fresh.next_logits(), rtol=0, atol=1e-5)


def test_goto_refuses_a_bad_number_and_changes_nothing(demo, new_session):
    session = branching(demo, new_session)
    state = SessionState(session)
    text, turn = session.text, session.turn
    for bad in ("9", "-1", "abc", "", "1.5"):
        reply = commands.run_command(state, f"/goto {bad}")
        assert reply.error and len(reply.lines) == 1 and "0 to 8" in reply.lines[0], reply.lines
        assert session.text == text and session.turn is turn


def test_undo_redo_and_alt_work_after_goto(demo, new_session):
    session = branching(demo, new_session)
    state = SessionState(session)
    deep = tree.find(session.root, 6)  # the continuation of the line that was undone
    commands.run_command(state, "/goto 6")
    commands.run_command(state, "/goto 0")
    for _ in range(4):  # /redo leads back down the path to turn 6, not to where the session last was
        session.redo()
    assert session.turn is deep and session.text == deep.text()
    commands.run_command(state, "/goto 3")
    assert [t is session.turn for t in session.alternatives()] == [False, True, False]
    session.undo()
    assert session.turn is tree.find(session.root, 1)
    assert session.redo() is tree.find(session.root, 3)
    assert not commands.run_command(state, "/alt 1").error
    assert session.turn is tree.find(session.root, 2) and session.text == session.turn.text()


def test_tree_command_lists_the_legend_then_the_tree(demo, new_session):
    session = branching(demo, new_session)
    reply = commands.run_command(SessionState(session), "/tree")
    assert not reply.error
    assert reply.lines[0].startswith("9 turns; ● the path") and "/goto N" in reply.lines[0]
    parsed(reply.lines[1:])


def test_goto_back_past_a_slide_sees_the_whole_text_again_as_a_fresh_start_would(demo, new_session):
    session = new_session(demo, greedy=True, max_new_tokens=700, min_new_tokens=700, stop=(), window_keep=0.5,
                          memory="주인공은 국회의원 민수다.")
    session.add_line("대한민국 국회는 법률을 정한다.")
    drain(session.generate())
    short = session.turn  # 700 tokens and the memory: within the window
    drain(session.generate())
    assert session.slides >= 1 and session.view_start > 0
    commands.run_command(SessionState(session), f"/goto {tree.numbers(session.root)[id(short)]}")
    assert session.ids == short.ids() and session.view_start == 0
    fresh = new_session(demo, greedy=True, memory="주인공은 국회의원 민수다.")
    fresh.context.become(short.ids())
    torch.testing.assert_close(session.next_logits(), fresh.next_logits(), rtol=0, atol=1e-5)
