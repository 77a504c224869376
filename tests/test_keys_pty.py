"""Keys typed while korepl is busy reach the next prompt as if typed there (a real pty, `korepl --demo`).

Between two prompts (a continuation streaming, a command printing) nobody reads the keyboard; these
tests type during a long continuation and check that the tty's line discipline did not act on the
keys meanwhile: Ctrl+D, Ctrl+\\, a long line, a paste, a line entered, a line in CP949.
"""

from __future__ import annotations

import os
import re
import time

import pexpect
import pytest

from test_repl_pty import ANSI, HANGUL, PROMPT, Terminal

TYPED_AHEAD_NOTE = "[running the line typed while korepl was busy]"
WRITING = HANGUL + ".{0,40}" + HANGUL + ".{0,40}" + HANGUL  # a continuation is streaming
PROMPT_ENDS = r"\x1b\[\?2004l"  # prompt_toolkit turns bracketed paste off as a prompt ends
DECSET = re.compile(r"\x1b\[\?([\d;]*)([hl])")  # set or reset DEC private modes (2004: bracketed paste)


class RawLog:
    """Everything the terminal received, terminal codes included (pexpect's logfile_read)."""

    def __init__(self):
        self.text = ""

    def write(self, data: str) -> None:
        self.text += data

    def flush(self) -> None:
        pass


@pytest.fixture
def term(tmp_path):
    terminal = Terminal(tmp_path)
    terminal.raw = RawLog()
    terminal.child.logfile_read = terminal.raw
    yield terminal
    if terminal.child.isalive():
        terminal.child.terminate(force=True)


def bracketed_paste_on(raw: str) -> bool:
    """Whether a terminal that received `raw` is in bracketed paste mode (the last 2004 set or reset wins)."""
    on = False
    for params, final in DECSET.findall(raw):
        if 2004 in [int(p) for p in params.split(";") if p]:
            on = final == "h"
    return on


def send_bytes(term, data: bytes) -> None:
    """Write raw bytes to the terminal, all of them (a pty may take a long write in parts)."""
    while data:
        data = data[os.write(term.child.child_fd, data):]


def paste(term, text: str) -> None:
    """Paste as a terminal does: Enter as \\r, the whole wrapped in paste marks when the program asked for them."""
    if bracketed_paste_on(term.raw.text):
        text = f"\x1b[200~{text}\x1b[201~"
    send_bytes(term, text.encode("utf-8"))


def stream(term, tokens: int = 4096, line: str = "헌법 제1조") -> None:
    """Enter `line` and return once its continuation (of exactly `tokens` tokens, no stop) is visibly writing."""
    for command in (f"/max {tokens}", f"/min {tokens}", "/stop del </s>", "/stop del </d>"):
        term.run(command)
    term.send(line)
    term.child.expect(PROMPT_ENDS, timeout=30)  # past the prompt, which shows the line typed
    term.child.expect(WRITING, timeout=30)


def stop(term) -> str:
    """Ctrl+C: stop the continuation; what it printed up to the next prompt."""
    time.sleep(0.3)  # the keys sent just before have reached korepl's terminal
    term.child.sendcontrol("c")
    return term.until(PROMPT, timeout=20)


def ends_with_status_0(term, timeout: int = 15) -> bool:
    term.child.expect(pexpect.EOF, timeout=timeout)
    term.child.close()
    return term.child.exitstatus == 0


def test_ctrl_d_while_streaming_leaves_once_stopped(term):
    stream(term)
    term.child.sendcontrol("d")  # once
    time.sleep(0.3)
    term.child.sendcontrol("c")
    assert ends_with_status_0(term)
    assert "[stopped; what was written stays]" in term.log + term.child.before
    assert not bracketed_paste_on(term.raw.text)  # the shell gets its terminal back as it was


def test_ctrl_d_while_streaming_leaves_once_the_continuation_ends(term):
    stream(term, tokens=120)
    term.child.sendcontrol("d")  # once, while it is still writing
    assert ends_with_status_0(term, timeout=60)
    assert "[stopped" not in ANSI.sub("", term.raw.text)  # the continuation ran to its end


def test_ctrl_backslash_while_streaming_does_not_kill_korepl(term):
    stream(term)
    term.child.send("\x1c")  # Ctrl+\: SIGQUIT in a cooked terminal
    time.sleep(0.5)
    assert term.child.isalive()
    stop(term)
    assert "tokens in the text" in term.run("/context")
    assert term.close() == 0


def test_a_long_line_typed_during_a_continuation_arrives_whole(term):
    line = "".join(f"{i:04d}번째 " for i in range(857)) + "끝"  # 6,000 characters, 9,428 bytes
    assert len(line) == 6000
    stream(term)
    send_bytes(term, line.encode("utf-8"))  # typed, not entered: it waits in the next prompt
    stop(term)
    term.send("")  # Enter at the prompt
    term.child.expect(r"more than the model's window", timeout=30)  # the line is in the text ...
    term.child.expect(WRITING, timeout=30)  # ... and its continuation is writing
    stop(term)
    context = re.sub(r"\[▸ the model sees from here\] ?", "", term.run("/context"))  # the line outgrew the window
    assert context.count(line) == 1
    assert term.close() == 0


def test_lines_pasted_during_a_continuation_wait_in_the_prompt(term):
    stream(term)
    paste(term, "line one\rline two")
    stop(term)
    with pytest.raises(pexpect.TIMEOUT):  # nothing was submitted: the prompt stays (it would end with 2004l)
        term.child.expect(PROMPT_ENDS, timeout=2)
    term.send("")  # Enter submits the paste, as one text
    term.child.expect(WRITING, timeout=30)
    stop(term)
    context = term.run("/context")
    assert context.count("line one\nline two") == 1 and context.count("line") == 2
    assert term.close() == 0


def test_a_line_entered_during_a_continuation_runs_next_and_says_so(term):
    stream(term)
    term.send("다음 줄")  # typed and entered while korepl writes
    stop(term)
    term.child.expect_exact(TYPED_AHEAD_NOTE, timeout=10)
    term.child.expect(WRITING, timeout=30)  # its own continuation
    stop(term)
    assert re.sub(r"\s", "", term.run("/context")).count("다음줄") == 1
    assert term.close() == 0


def test_a_cp949_line_is_read_as_korean(term):
    term.run("/max 10")
    term.run("대한민국")  # a first line and its continuation
    send_bytes(term, "가나다".encode("cp949") + b"\r")  # b0 a1 b3 aa b4 d9, from a legacy terminal
    out = term.until(PROMPT, timeout=30)
    assert "Traceback" not in out
    assert "[the line was not UTF-8; it was read as CP949 (the Korean legacy encoding)]" in out.replace("\n", "")
    assert "가나다" in term.run("/context")
    assert "top_k = 4" in term.run("/topk 4")  # korepl still answers
    term.send("/quit")
    assert ends_with_status_0(term)
    assert not bracketed_paste_on(term.raw.text)



def test_a_cp949_line_is_kept_in_the_history_as_korean(term, tmp_path):
    send_bytes(term, "가나다".encode("cp949") + b"\r")
    term.until(PROMPT, timeout=30)
    assert term.close() == 0
    history = (tmp_path / "state" / "korepl" / "history").read_text(encoding="utf-8")
    assert "+가나다\n" in history and "?" not in history  # prompt_toolkit alone would have written '??????'
    again = Terminal(tmp_path)
    again.child.send("\x1b[A\x1b[A")  # Up twice: past wait_ready's /context, to the line
    again.run("")
    assert "가나다" in again.run("/context")
    assert again.close() == 0

# --- the parts on their own: korepl.terminal on a bare pty, replay into a prompt on a pipe ---------------


@pytest.fixture
def pty_pair():
    import pty

    leader, follower = pty.openpty()
    yield leader, follower
    os.close(leader)
    os.close(follower)


def test_busy_mode_keeps_every_key_but_ctrl_c_as_typed(pty_pair):
    import termios

    from korepl.terminal import BusyTerminal

    leader, follower = pty_pair
    own = termios.tcgetattr(follower)
    terminal = BusyTerminal(follower)
    with terminal:
        iflag, _, _, lflag, _, _, cc = termios.tcgetattr(follower)
        assert not lflag & (termios.ICANON | termios.ECHO | termios.IEXTEN) and not iflag & termios.IXON
        assert lflag & termios.ISIG and lflag & termios.NOFLSH and cc[termios.VINTR] == b"\x03"
        assert cc[termios.VQUIT] == cc[termios.VSUSP] == cc[termios.VEOF] == cc[termios.VWERASE] == b"\x00"
        typed = b"\x04\x17\x1c\x1a\x13\x16ab\r" + "가".encode() * 3000  # Ctrl+D W \ Z S V, Enter, 9 KB
        send = bytearray(typed)
        while send:  # the reader keeps the tty's 4 KiB buffer from filling, so all of it goes in
            del send[:os.write(leader, send)]
    assert terminal.take_typed_ahead() == typed
    assert terminal.take_typed_ahead() == b""
    assert termios.tcgetattr(follower)[3] == lflag  # busy until closed: no cooked instant before the prompt
    terminal.close()
    assert termios.tcgetattr(follower) == own


def test_a_paste_is_read_to_its_end_mark(pty_pair):
    import threading

    from korepl.terminal import BusyTerminal

    leader, follower = pty_pair
    terminal = BusyTerminal(follower)
    with terminal:
        os.write(leader, b"\x1b[200~line one\r")
        late = threading.Timer(0.2, os.write, (leader, b"line two\x1b[201~"))  # the rest comes after korepl is done
        late.start()
    late.join()
    assert terminal.take_typed_ahead() == b"\x1b[200~line one\rline two\x1b[201~"
    terminal.close()


def prompt_with(typed: bytes, then: str = ""):
    """What a prompt returns when `typed` was typed while korepl was busy, and `then` at the prompt itself."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from korepl.terminal import replay

    entered = []
    with create_pipe_input() as keyboard:
        keyboard.send_text(then)
        session = PromptSession(input=keyboard, output=DummyOutput())
        line = session.prompt("> ", pre_run=lambda: entered.append(replay(session.app, typed)))
    return line, entered[0]


def test_keys_typed_ahead_mean_what_they_mean_at_the_prompt():
    assert prompt_with(b"hello wor\x17ld\r") == ("hello ld", True)  # Ctrl+W rubs out a word; Enter enters
    assert prompt_with(b"\x1b[200~line one\rline two\x1b[201~", "\r") == ("line one\nline two", False)
    assert prompt_with(b"\xb0\xa1", "\r") == ("\udcb0\udca1", False)  # as prompt_toolkit reads bytes
    with pytest.raises(EOFError):
        prompt_with(b"\x04")  # Ctrl+D on an empty line leaves
