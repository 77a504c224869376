"""A writer never loses text: each turn is on disk before the next prompt, whatever ends korepl.

Real `korepl --demo` processes in a pty, killed the way terminals and machines kill them.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from korepl import store
from korepl.commands import VIEW_MARK
from test_repl_pty import ANSI, PROMPT, Terminal

KILLS = int(os.environ.get("KOREPL_KILLS", "50"))


def sessions(home) -> list:
    return sorted((home / "state" / "korepl" / "sessions").glob("*.json"))


def saved_text(path) -> str:
    return json.loads(path.read_text(encoding="utf-8"))["text"]


def context_of(term: Terminal) -> str:
    """The text as /context shows it, without the mark of where the model's view begins."""
    return term.run("/context").split("/context", 1)[1].replace(VIEW_MARK, "")


def killed(term: Terminal) -> None:
    term.child.kill(signal.SIGKILL)
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()


def spawn(home, *args: str, **kwargs) -> pexpect.spawn:
    """`korepl ARGS` in a pty, not waited on (Terminal waits for the model)."""
    return spawn_python(home, None, *args, **kwargs)


def spawn_python(home, code: str | None, *args: str, **kwargs) -> pexpect.spawn:
    """`python -c CODE` (a fault injected before korepl runs), or `python -m korepl ARGS`, in a pty."""
    env = dict(os.environ, TERM="xterm-256color", PROMPT_TOOLKIT_NO_CPR="1", HF_HUB_OFFLINE="1",
               XDG_CONFIG_HOME=str(home / "config"), XDG_STATE_HOME=str(home / "state"))
    argv = ["-c", code] if code is not None else ["-m", "korepl", *args]
    return pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", dimensions=(40, 160), timeout=60,
                         cwd=os.getcwd(), **kwargs)


def attach(child: pexpect.spawn) -> Terminal:
    """A Terminal around a process spawned here, at its first prompt."""
    term = Terminal.__new__(Terminal)
    term.child, term.log = child, ""
    term.until(PROMPT)
    return term


def test_each_turn_is_on_disk_before_the_next_prompt(tmp_path):
    term = Terminal(tmp_path)
    assert sessions(tmp_path) == []  # no text yet, no file
    term.run("/max 12")
    term.run("대한민국의 모든 국민은")
    context = context_of(term)
    killed(term)
    [path] = sessions(tmp_path)
    assert saved_text(path).startswith("대한민국의 모든 국민은") and len(saved_text(path)) > len("대한민국의 모든 국민은")
    again = Terminal(tmp_path, "--resume")
    assert "resumed" in again.log
    assert context_of(again) == context
    assert again.close() == 0


def test_an_empty_run_never_replaces_a_full_one(tmp_path):
    first = Terminal(tmp_path)
    first.run("/max 8")
    first.run("국가는 전통문화의 계승")
    text = context_of(first)
    assert first.close() == 0
    second = Terminal(tmp_path)
    second.run("/topk 3")
    assert second.close() == 0
    third = Terminal(tmp_path, "--resume")
    assert context_of(third) == text
    assert third.close() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_save_and_exit(tmp_path, signum):
    term = Terminal(tmp_path)
    term.run("/max 4096")
    term.run("/stop del </s>")
    term.run("/stop del </d>")
    term.send("헌법 제1조")
    term.child.expect("제1조.*\n")  # the line is in; then the continuation streams
    term.child.expect(r"[\uac00-\ud7a3].{0,40}[\uac00-\ud7a3].{0,40}[\uac00-\ud7a3]")
    term.child.kill(signum)
    term.child.expect(pexpect.EOF, timeout=30)
    term.child.close()
    assert term.child.exitstatus == 128 + signum or term.child.signalstatus is None
    [path] = sessions(tmp_path)
    assert saved_text(path).startswith("헌법 제1조")
    assert "Traceback" not in ANSI.sub("", term.child.before or "")


def test_resume_order_saved_then_user_config_then_flags_then_typed(tmp_path):
    folder = tmp_path / "config" / "korepl"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("[decoding]\ntemperature = 0.7\n")
    first = Terminal(tmp_path)
    for command in ("/topk 3", "/temp 1.5", "/rep 1.3", "/max 33"):
        first.run(command)
    first.run("대한민국")
    assert first.close() == 0
    child = spawn(tmp_path, "--demo", "--resume", "--top-k", "9")
    child.expect(PROMPT)
    child.send("/max 50\r")  # typed while the model (and the session) still load
    child.expect("max_new_tokens = 50")
    startup = ANSI.sub("", child.before)
    child.expect(PROMPT)
    second = Terminal.__new__(Terminal)
    second.child, second.log = child, startup
    second.wait_ready()
    settings = second.run("/settings")
    assert re.search(r"top_k\s+9\n", settings)  # the flag
    assert re.search(r"temperature\s+0.7\n", settings)  # the user's file
    assert re.search(r"max_new_tokens\s+50\n", settings)  # typed while resuming
    assert re.search(r"repetition_penalty\s+1.3\n", settings)  # the saved session's own
    assert "대한민국" in context_of(second)
    assert second.close() == 0


CRASHING = """
import dataclasses
import korepl.commands as commands
def boom(state, args):
    raise RuntimeError("an internal fault injected by the test")
commands._BY_NAME["context"] = dataclasses.replace(commands._BY_NAME["context"], run=boom)
from korepl.cli import main
raise SystemExit(main(["--demo"]))
"""


def test_an_internal_error_saves_reports_and_goes_on(tmp_path):
    term = attach(spawn_python(tmp_path, CRASHING))
    term.run("/max 6")
    term.run("대한민국의 모든 국민은")
    out = term.run("/context")
    assert "Traceback" not in out and "injected" not in out  # the details go to the report, not the screen
    report = re.search(r"(/\S+crash-\S+\.txt)", out.replace("\n", ""))
    assert report and "saved" in out
    assert "an internal fault injected by the test" in open(report.group(1), encoding="utf-8").read()
    assert "top_k = 3" in term.run("/topk 3")  # the REPL goes on
    [path] = sessions(tmp_path)
    assert saved_text(path).startswith("대한민국의 모든 국민은")
    assert term.close() == 0


SLOW_RESUME = """
import time
import korepl.store as store
real_restore = store.restore
def slow_restore(session, data, source):
    print("RESTORING", flush=True)
    time.sleep(2)
    real_restore(session, data, source)
store.restore = slow_restore
from korepl.cli import main
raise SystemExit(main(["--demo", "--resume"]))
"""


def test_ctrl_c_while_the_session_resumes_waits_for_it(tmp_path):
    first = Terminal(tmp_path)
    first.run("/max 5")
    first.run("대한민국의 모든 국민은")
    context = context_of(first)
    assert first.close() == 0
    child = spawn_python(tmp_path, SLOW_RESUME)
    term = attach(child)
    for _ in range(240):  # commands answer while the model loads; the first after it resumes the session
        term.send("/topk 4")
        if child.expect([PROMPT, "RESTORING"]) == 1:
            break
        time.sleep(0.25)
    else:
        raise AssertionError("the session did not resume")
    time.sleep(0.3)
    child.sendcontrol("c")  # while the saved session is being restored
    out = term.until(PROMPT, timeout=30)
    assert "Traceback" not in out  # Ctrl+C waited for the session to be made, then stopped what asked for it
    assert context_of(term) == context  # the session was resumed whole, not left empty
    assert "resumed " in term.log
    assert term.close() == 0

def test_two_processes_on_one_state_folder_keep_both(tmp_path):
    first, second = Terminal(tmp_path), Terminal(tmp_path)
    first.run("/max 5")
    second.run("/max 5")
    first.run("첫째 사람의 글")
    second.run("둘째 사람의 글")
    first.run("첫째 사람의 둘째 줄")
    assert first.close() == 0 and second.close() == 0
    texts = sorted(saved_text(p)[:8] for p in sessions(tmp_path))
    assert texts == ["둘째 사람의 글", "첫째 사람의 글"]
    history = (tmp_path / "state" / "korepl" / "history").read_text(encoding="utf-8")
    assert "첫째 사람의 둘째 줄" in history and "둘째 사람의 글" in history


def test_an_unwritable_state_folder_is_said_once_and_the_repl_goes_on(tmp_path):
    blocker = tmp_path / "state-is-a-file"
    blocker.write_text("not a folder")
    term = Terminal(tmp_path, extra_env={"XDG_STATE_HOME": str(blocker)})
    term.run("/max 5")
    out = term.run("대한민국")
    assert out.count("could not save the session") == 1 and "Traceback" not in out
    out = term.run("국민은")
    assert "could not save the session" not in out  # said once, not after every turn
    assert "대한민국" in context_of(term)
    assert term.close() == 0


def test_a_full_disk_keeps_the_previous_file_whole(tmp_path):
    term = Terminal(tmp_path)
    term.run("/max 5")
    term.run("대한민국")
    [path] = sessions(tmp_path)
    before = path.read_bytes()
    assert term.close() == 0
    limit = len(before) + 200  # the next save, with more text, no longer fits

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = attach(spawn(tmp_path, "--demo", "--resume", preexec_fn=small_disk))
    full.wait_ready()
    out = full.run("국민은 " * 80)
    assert "could not save the session" in out and "Traceback" not in out
    assert full.close() == 0
    for saved in sessions(tmp_path):  # every file on disk is whole and loads
        store.read_file(saved)
    assert path.read_bytes() == before
    assert not list((tmp_path / "state" / "korepl" / "sessions").glob(".*.tmp"))




def test_kill9_at_random_moments_loses_no_completed_turn(tmp_path):
    """kill -9 while loading, while writing, during a command, during a save: --resume has every finished turn."""
    seed = int(os.environ.get("KOREPL_KILL_SEED", "12"))
    rng = random.Random(seed)
    print(f"seed {seed}, {KILLS} kills")
    completed: list[str] = []  # every line whose turn finished (its continuation shown, the next prompt up)
    saves = tmp_path / "saves"
    saves.mkdir()
    for round_ in range(KILLS):
        resume = ("--resume",) if completed else ()
        if rng.random() < 0.15:  # while the model loads and the session resumes
            child = spawn(tmp_path, "--demo", *resume)
            time.sleep(rng.uniform(0, 1.5))
            child.kill(signal.SIGKILL)
            child.expect(pexpect.EOF, timeout=30)
            child.close()
            continue
        term = Terminal(tmp_path, *resume, "--max-new-tokens", str(rng.choice((4, 12, 40))))
        if completed:
            context = context_of(term)
            missing = [line for line in completed if line not in context]
            assert not missing, f"round {round_}: lost {missing}"
        for _ in range(rng.randint(0, 2)):
            line = f"{round_}번째 글 {rng.randint(0, 999)}번"
            term.run(line)
            completed.append(line)
        moment = rng.choice(("writing", "command", "save", "idle"))
        if moment == "writing":
            term.send(f"{round_}번째 끊긴 글")
            time.sleep(rng.uniform(0, 0.4))
        elif moment == "command":  # none of these takes back a line
            term.send(rng.choice(("/peek 5", "/retry", "/settings", "/alt 1", "/topk 4")))
            time.sleep(rng.uniform(0, 0.2))
        elif moment == "save":
            term.send(f"/save {saves / 'mine.json'}")
            time.sleep(rng.uniform(0, 0.05))
        killed(term)
    final = Terminal(tmp_path, "--resume")
    context = context_of(final)
    assert [line for line in completed if line not in context] == []
    assert final.close() == 0
    assert not list((tmp_path / "state" / "korepl" / "sessions").glob(".*.tmp"))


def test_sessions_are_listed_from_the_command_line_and_the_repl(tmp_path):
    first = Terminal(tmp_path)
    first.run("/max 4")
    first.run("첫째 이야기의 시작")
    assert first.close() == 0
    second = Terminal(tmp_path)
    second.run("/max 4")
    second.run("둘째 이야기의 시작")
    listing = second.run("/sessions")
    assert listing.index("둘째 이야기의 시작") < listing.index("첫째 이야기의 시작")  # newest first
    assert second.close() == 0
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    result = subprocess.run([sys.executable, "-m", "korepl", "--sessions"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    rows = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == 2 and "둘째 이야기의 시작" in rows[0] and "첫째 이야기의 시작" in rows[1]
    assert all(re.search(r"\.json  \d{4}-\d\d-\d\d \d\d:\d\d\s+\d+ tokens\s+[\d.]+ KiB", row) for row in rows)
