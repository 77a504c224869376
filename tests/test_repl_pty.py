"""The REPL driven in a real pseudo-terminal (pexpect) against `korepl --demo`."""

from __future__ import annotations

import os
import re
import sys
import time

import pexpect
import pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[>=]|[\r\x08]")
PROMPT = r"\x1b\[\?2004h"  # prompt_toolkit turns bracketed paste on as each new prompt starts
HANGUL = r"[\uac00-\ud7a3]"


class Terminal:
    """A `korepl --demo` process in a pty, with XDG folders of its own under `home`."""

    def __init__(self, home, *args: str, model=("--demo",), extra_env=None, dimensions=(40, 160)):
        env = dict(os.environ, TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", HF_HUB_OFFLINE="1",
                   XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"),
                   PYTHONIOENCODING="utf-8")
        env.update(extra_env or {})
        self.log = ""  # everything printed so far, terminal codes removed
        self.child = pexpect.spawn(sys.executable, ["-m", "korepl", *model, *args], env=env,
                                   encoding="utf-8", dimensions=dimensions, timeout=60)
        self.startup = self.until(PROMPT)
        if model == ("--demo",):
            self.wait_ready()

    def until(self, pattern: str, timeout: int = 60) -> str:
        """Wait for `pattern` (a regex on the raw output); return the output before it, terminal codes removed."""
        self.child.expect(pattern, timeout=timeout)
        text = ANSI.sub("", self.child.before)
        self.log += text
        return text

    def send(self, line: str) -> None:
        self.child.send(line + "\r")

    def run(self, line: str, timeout: int = 60) -> str:
        """Enter a line; return what it printed before the next prompt."""
        self.send(line)
        return self.until(PROMPT, timeout)

    def wait_ready(self) -> None:
        """Commands answer while the model loads; ask for the context until it has loaded."""
        for _ in range(240):
            if "tokens in the text" in self.run("/context"):
                return
            time.sleep(0.25)
        raise AssertionError("the model did not load")

    def close(self) -> int:
        self.child.sendcontrol("d")
        self.child.expect(pexpect.EOF, timeout=30)
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def term(tmp_path):
    terminal = Terminal(tmp_path)
    yield terminal
    if terminal.child.isalive():
        terminal.child.terminate(force=True)


def continuation_of(out: str, line: str) -> str:
    """The continuation printed after the echoed `line`."""
    return out.split(line, 1)[1]


def test_korean_line_gets_a_streamed_korean_continuation(term):
    out = term.run("대한민국의 모든 국민은")
    assert re.search(HANGUL + "{2}.*" + HANGUL + "{2}", continuation_of(out, "국민은"))
    out = term.run("국가는 전통문화의")
    assert re.search(HANGUL, continuation_of(out, "전통문화의"))
    text = term.run("/context")
    assert text.count("\n국가는 전통문화의 ") == 1  # a typed line joins after a newline
    assert term.close() == 0


def test_settings_commands(term):
    assert "top_k = 3" in term.run("/topk 3")
    settings = term.run("/settings")
    assert re.search(r"top_k\s+3\n", settings) and re.search(r"precision\s+float32 \(asked for\)\n", settings)
    assert "top_k must be a whole number from 1 to 100000 (got 'abc')" in term.run("/topk abc")
    assert re.search(r"top_k\s+3\n", term.run("/show"))  # the bad value changed nothing
    assert "unknown command /topkk; did you mean /topk?" in term.run("/topkk 4")
    assert "top_k = 7" in term.run("/set parameter top_k 7")
    assert "max_new_tokens = 20" in term.run("/set parameter num_predict 20")
    assert "top_p must be a number greater than 0 and at most 1 (got 1.5)" in term.run("/topp 1.5")
    assert "sample among the k likeliest tokens" in term.run("/help topk")
    term.run("/seed 1")  # a fixed draw: top-k 7 on the demo model can, unseeded, write a run of Latin letters
    out = term.run("한국어로 쓴 문장")
    assert re.search(HANGUL, continuation_of(out, "쓴 문장"))
    assert re.search(r"top_k\s+7\n", term.run("/settings"))
    assert term.close() == 0



def test_settings_name_the_session_file(term, tmp_path):
    assert re.search(r"session file\s+\(none yet: the first text makes it\)\n", term.run("/settings"))
    term.run("/max 5")
    term.run("대한민국")
    [path] = (tmp_path / "state" / "korepl" / "sessions").glob("*.json")
    assert re.search(rf"session file\s+{re.escape(str(path))}\n", term.run("/settings"))
    assert term.close() == 0
    assert f"saved to {path}" in ANSI.sub("", term.child.before).replace("\n", "")

def test_ctrl_c_stops_a_long_generation_and_keeps_the_text(term):
    term.run("/max 4096")
    assert "stop = (none)" in term.run("/stop del </s>") + term.run("/stop del </d>")
    term.send("헌법 제1조")
    term.child.expect(HANGUL + ".{0,40}" + HANGUL + ".{0,40}" + HANGUL)  # it is writing
    term.child.expect(r"(?:\S\s*){30}")  # and has written enough to compare (a busy machine writes slowly)
    time.sleep(0.5)
    term.child.sendcontrol("c")
    out = term.until(PROMPT)
    assert "[stopped; what was written stays]" in out
    shown_tail = re.sub(r"\s", "", out.split("[stopped")[0].replace("^C", ""))[-20:]
    context = term.run("/context")
    count = int(re.search(r"(\d+) tokens in the text", context).group(1))
    assert 5 < count < 4096 and len(shown_tail) == 20
    # The text shown before Ctrl+C is the text kept: the context ends with what was shown last.
    assert re.sub(r"\s", "", context).endswith(shown_tail)
    term.send("/quit")  # /quit leaves with status 0
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()
    assert term.child.exitstatus == 0


def test_ctrl_c_at_prompt_clears_the_line(term):
    term.child.send("지워질 문장")
    term.child.sendcontrol("c")
    term.until(PROMPT)
    assert "(the text is empty)" in term.run("/context")
    assert term.close() == 0


def test_multiline_block(term):
    term.run('"""첫째 줄')
    term.run("둘째 줄")
    term.run('"""')
    assert "첫째 줄\n둘째 줄" in term.run("/context")
    assert term.close() == 0


def test_history_is_kept_between_runs(tmp_path):
    first = Terminal(tmp_path)
    first.run("/topk 4")
    assert first.close() == 0
    second = Terminal(tmp_path)
    # Up twice: past the /context that wait_ready typed, to the /topk of the previous run.
    second.child.send("\x1b[A\x1b[A")
    assert "top_k = 4" in second.run("")
    assert second.close() == 0


def write_user_config(home, text: str) -> None:
    """The user's config file, where korepl looks for it under this test's XDG_CONFIG_HOME."""
    folder = home / "config" / "korepl"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text(text)


def test_bad_user_config_names_file_and_key_and_starts_on_defaults(tmp_path):
    write_user_config(tmp_path, "[decoding]\ntop_p = 0.9\ntop_k = 0\n")
    term = Terminal(tmp_path)
    assert re.search(r"korepl/config.toml: \[decoding\] top_k must be a whole number from 1 to \d+ \(got 0\); "
                     r"starting on the defaults", term.startup.replace("\n", ""))
    out = term.run("/settings")
    assert re.search(r"top_k\s+5\n", out) and re.search(r"top_p\s+1\n", out)
    assert term.close() == 0


def test_bad_user_toml_names_the_line(tmp_path):
    write_user_config(tmp_path, 'model = "x"\n[decoding\n')
    term = Terminal(tmp_path)
    assert "config.toml: " in term.startup and "line 2" in term.startup
    assert term.close() == 0


def test_load_failure_shows_the_paragraph_and_commands_still_work(tmp_path):
    term = Terminal(tmp_path, model=("--model", str(tmp_path / "no-such-model")))
    assert "top_k = 2" in term.run("/topk 2")
    out = term.run("대한민국")
    assert "could not load the model" in out and "--demo" in out and "Traceback" not in out
    assert term.close() == 0


def test_writer_controls_in_the_repl(term):
    assert "no_repeat_ngram_size = 3" in term.run("/norepeat 3")
    assert "ban = 정한다" in term.run("/ban add 정한다")
    assert "min_new_tokens = 1" in term.run("/min 1")
    assert "repetition_window = all" in term.run("/repwindow all")
    assert "no_repeat_ngram_size must be a whole number from 0 to 20 (got -2)" in term.run("/norepeat -2")
    assert "min_new_tokens must be a whole number from 0 to 4096 (got 'x')" in term.run("/min x")
    assert "usage: /ban add TEXT" in term.run("/ban remove 정한다")
    settings = term.run("/settings")
    for expected in (r"no_repeat_ngram_size\s+3\n", r"ban\s+정한다\n", r"min_new_tokens\s+1\n"):
        assert re.search(expected, settings)
    out = term.run("대한민국의 모든 국민은")
    assert "정한다" not in continuation_of(out, "국민은")
    assert term.close() == 0


def test_a_turn_that_ends_at_once_says_so(term):
    term.run("/greedy")
    term.run("/stop add ①")  # the demo model's likeliest next token after 제1조 is '▁①'
    out = term.run("제1조")
    assert "[the continuation began with the stop text '①'; nothing was added; /stop del ① lets it through]" in out
    assert term.close() == 0


def test_a_paste_longer_than_the_window_is_kept_and_slides(term):
    paste = "대한민국은 민주공화국이다. 모든 권력은 국민으로부터 나온다. " * 60
    term.run("/max 10")
    out = term.run(paste, timeout=120)
    assert re.search(r"\[the text is \d+ tokens, more than the model's window of 1024: all of it is kept", out)
    assert re.search(r"\[the window slid: the model no longer sees the first \d+ tokens of the text\]", out)
    context = term.run("/context")
    assert "[▸ the model sees from here]" in context
    assert context.count("모든 권력은 국민으로부터 나온다.") >= 59  # the whole paste is kept
    assert term.close() == 0


def test_exploring_in_the_repl(tmp_path):
    term = Terminal(tmp_path)
    first = continuation_of(term.run("대한민국의 모든 국민은"), "국민은").strip()
    term.run("/retry")
    listing = term.run("/alt")
    assert re.search(r"\n 1\. .+\n\*2\. .+\n", listing)
    assert "alternative 1" in term.run("/alt 1")
    assert re.sub(r"\s", "", first)[:15] in re.sub(r"\s", "", term.run("/context"))
    assert "took back the continuation" in term.run("/undo")
    assert "took back the line '대한민국의 모든 국민은'" in term.run("/undo")
    assert "brought back '대한민국의 모든 국민은'" in term.run("/redo")
    peek = term.run("/peek 3")
    candidates = re.findall(r"\n\s+\d\.\s+\d+\.\d\d%  (\S+)\s+\d+\.\d\d%", peek)  # number, chance, token, model p
    assert len(candidates) == 3
    term.run("/pick 2")
    assert candidates[1].replace("␣", "") in term.run("/context")
    saved = tmp_path / "mine.json"
    assert f"saved to {saved}" in term.run(f"/save {saved}")
    assert "no such file; the current session is unchanged" in term.run(f"/load {tmp_path / 'nothing.json'}")
    assert "not a regular file" in term.run("/load /dev/null")
    context = term.run("/context").split("/context", 1)[1]
    assert term.close() == 0
    # Leaving saved the session; --resume brings it back.
    again = Terminal(tmp_path, "--resume")
    assert "resumed " in again.log
    assert again.run("/context").split("/context", 1)[1] == context
    assert again.close() == 0


def test_edit_in_the_editor(tmp_path):
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nsed -i "s/국민은/시민은/" "$1"\n')
    editor.chmod(0o755)
    term = Terminal(tmp_path, extra_env={"EDITOR": str(editor), "VISUAL": ""})
    term.run("/max 5")
    term.run("대한민국의 모든 국민은")
    out = term.run("/edit")
    assert "the text is updated; the model re-reads only its last" in out
    assert "대한민국의 모든 시민은" in term.run("/context")
    assert term.close() == 0
