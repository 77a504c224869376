"""/export and `korepl --resume --export`: the text out as .txt or .md, atomically, never into a made-up folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from benchmarks.fixtures import drain
from korepl import commands, export, store
from test_commands import SessionState
from test_repl_pty import Terminal
from test_tree import branching

MEMORY = "주인공은 서울의 학생이다.\n때는 봄이다."


def run(session, line):
    return commands.run_command(SessionState(session), line)


def test_txt_is_the_readable_text_exactly(demo, new_session, tmp_path):
    session = new_session(demo, max_new_tokens=6, seed=2, stop=(), mode="chat")
    session.add_line("안녕하세요")
    drain(session)
    session.add_line("대한민국의 헌법은")
    drain(session)
    assert "<usr>" in session.text  # chat markup is in the text, and must not be in the export
    reply = run(session, f"/export {tmp_path / 'out.txt'}")
    assert not reply.error and reply.lines == (f"exported the text to {tmp_path / 'out.txt'}",)
    written = (tmp_path / "out.txt").read_bytes().decode("utf-8")
    assert written == session.readable(session.text) and "<usr>" not in written and "> 안녕하세요" in written
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left beside it


def test_md_has_the_memory_as_a_note_then_the_text(demo, new_session, tmp_path):
    session = branching(demo, new_session, memory=MEMORY)
    reply = run(session, f"/export {tmp_path / 'out.md'}")
    assert not reply.error
    written = (tmp_path / "out.md").read_text(encoding="utf-8")
    assert written == f"> **Memory**\n>\n> 주인공은 서울의 학생이다.\n> 때는 봄이다.\n\n{session.text}\n"
    assert "[^" not in written  # footnotes only when asked


def test_md_without_memory_is_the_text(demo, new_session, tmp_path):
    session = branching(demo, new_session)
    run(session, f"/export {tmp_path / 'out.md'}")
    assert (tmp_path / "out.md").read_text(encoding="utf-8") == session.text + "\n"


def test_md_alts_puts_the_other_continuations_in_footnotes(demo, new_session, tmp_path):
    session = branching(demo, new_session, memory=MEMORY)
    chosen = session.turn.parent.parent  # the third of three continuations of the first line
    first, second = [t for t in chosen.parent.children if t is not chosen]
    assert not run(session, f"/export {tmp_path / 'alts.md'} alts").error
    written = (tmp_path / "alts.md").read_text(encoding="utf-8")
    note = "> **Memory**\n>\n> 주인공은 서울의 학생이다.\n> 때는 봄이다.\n\n"
    assert written.startswith(note)
    body, footnote = written[len(note):].split("\n\n[^1]: ")
    # One mark, right after the chosen continuation; without it, the text as it is.
    assert body.count("[^1]") == 1 and body.replace("[^1]", "") == session.text
    assert body[: body.index("[^1]")] == chosen.text()
    assert footnote.startswith("alternatives to continuation 3 of 3:")
    assert f"1. {first.new_text.strip()}" in footnote and f"2. {second.new_text.strip()}" in footnote
    assert chosen.new_text.strip() not in footnote


def test_refusals_change_nothing_and_write_nothing(demo, new_session, tmp_path):
    session = branching(demo, new_session)
    text, turn = session.text, session.turn
    cases = {
        f"/export {tmp_path / 'missing' / 'out.txt'}": "no folder",
        f"/export {tmp_path / 'out.docx'}": "a .txt file (the plain text) or a .md file",
        f"/export {tmp_path / 'out'}": "a .txt file (the plain text) or a .md file",
        f"/export {tmp_path / 'out.txt'} alts": "export to a .md file for them",
        "/export": "usage: /export FILE.txt",
        f"/export {tmp_path / 'a'}\x00.txt": "nothing was written",
        f"/export {tmp_path / 'folder.md'}": "is a folder",
        "/export ~no_such_user_of_korepl/out.txt": "no such home folder",
    }
    (tmp_path / "folder.md").mkdir()
    for line, message in cases.items():
        reply = run(session, line)
        assert reply.error and len(reply.lines) == 1 and message in reply.lines[0], (line, reply.lines)
        assert session.text == text and session.turn is turn
    assert os.listdir(tmp_path) == ["folder.md"]  # no folder made, no file, no temporary left


def test_an_existing_file_is_replaced_and_the_reply_says_so(demo, new_session, tmp_path):
    session = branching(demo, new_session)
    target = tmp_path / "out.txt"
    target.write_text("옛 글", encoding="utf-8")
    reply = run(session, f"/export {target}")
    assert not reply.error and "replaced" in reply.lines[0]
    assert target.read_text(encoding="utf-8") == session.text
    assert "replaced" not in run(session, f"/export {tmp_path / 'new.txt'}").lines[0]


def korepl_env(home):
    return dict(os.environ, HF_HUB_OFFLINE="1", XDG_CONFIG_HOME=str(home / "config"),
                XDG_STATE_HOME=str(home / "state"), PYTHONIOENCODING="utf-8")


def korepl(home, *args):
    return subprocess.run([sys.executable, "-m", "korepl", *args], capture_output=True, text=True, timeout=300,
                          env=korepl_env(home), stdin=subprocess.DEVNULL)


def test_cli_resume_export_writes_the_file_and_opens_no_repl(demo, new_session, tmp_path):
    session = branching(demo, new_session, memory=MEMORY)
    saved = tmp_path / "session.json"
    store.save(session, saved)
    out = korepl(tmp_path, "--demo", "--resume", str(saved), "--export", str(tmp_path / "out.md"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"exported the Markdown to {tmp_path / 'out.md'}\n"
    assert (tmp_path / "out.md").read_text(encoding="utf-8") == export.markdown(session)
    # The latest session of the state folder when no FILE is named.
    sessions = tmp_path / "state" / "korepl" / "sessions"
    sessions.mkdir(parents=True)
    store.save(session, sessions / "2026-01-01T00-00-00-1.json")
    out = korepl(tmp_path, "--demo", "--resume", "--export", str(tmp_path / "out.txt"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == session.text


def test_cli_export_refusals(tmp_path, demo, new_session):
    out = korepl(tmp_path, "--demo", "--export", str(tmp_path / "out.txt"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "with --resume" in out.stderr
    session = branching(demo, new_session)
    store.save(session, tmp_path / "s.json")
    out = korepl(tmp_path, "--demo", "--resume", str(tmp_path / "s.json"),
                 "--export", str(tmp_path / "no" / "o.txt"))
    assert out.returncode == 2 and "no folder" in out.stderr and "Traceback" not in out.stderr
    assert sorted(os.listdir(tmp_path)) == ["s.json"]


def test_retry_tree_goto_export_in_the_repl(tmp_path):
    term = Terminal(tmp_path)
    term.run("/max 6")
    term.run("/stop del </s>")
    term.run("대한민국의 모든 국민은")
    term.run("/retry")
    drawn = term.run("/tree")
    assert "4 turns; ● the path" in drawn and "\n1 ● typed  대한민국의 모든 국민은\n" in drawn
    assert re.search(r"\n2   ├─ generated alt 1/2  \S", drawn) and re.search(r"\n3 ▶ └─ generated alt 2/2  \S", drawn)
    moved = term.run("/goto 2")
    assert "at turn 2 (generated)" in moved
    assert re.search(r"\n2 ▶ ├─ generated alt 1/2  .*\n3   └─ generated alt 2/2", term.run("/tree"))
    context = term.run("/context").split("/context", 1)[1].split("\n", 2)[2].rstrip("\n")
    assert "exported the text to" in term.run(f"/export {tmp_path / 'out.txt'}")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == context
    assert "no folder" in term.run(f"/export {tmp_path / 'nope' / 'out.txt'}")
    assert term.close() == 0
