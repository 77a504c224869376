"""Any bytes in: stdin, argv, config files and typed lines never end korepl with a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import hypothesis
import hypothesis.strategies as st
import pytest

from korepl import textin

CP949_GANADA = "가나다".encode("cp949")  # b0 a1 b3 aa b4 d9, as a Korean legacy terminal sends it


def korepl(*args: bytes | str, stdin: bytes | None = None, env_extra=None, timeout: int = 120):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    argv = [os.fsencode(a) if isinstance(a, str) else a for a in ("-m", "korepl", *args)]
    return subprocess.run([os.fsencode(sys.executable), *argv], input=stdin, capture_output=True, timeout=timeout,
                          env=env, stdin=None if stdin is not None else subprocess.DEVNULL)


@hypothesis.given(st.binary(max_size=300))
def test_any_bytes_become_clean_text(data):
    clean = textin.decode_bytes(data)
    clean.text.encode("utf-8")  # no surrogates: every tokenizer accepts it
    assert not textin.CONTROL.search(clean.text) and "\x1b" not in clean.text
    try:
        expected = data.decode("utf-8")
    except UnicodeDecodeError:
        assert clean.note  # anything but UTF-8 is said
    else:
        if not textin.CONTROL.search(expected) and "\x1b" not in expected and "\r" not in expected:
            assert clean == textin.Clean(expected)  # clean UTF-8 passes untouched, without a word


@hypothesis.given(st.binary(max_size=200))
def test_terminal_and_argv_strings_are_read_like_their_bytes(data):
    """argv and prompt_toolkit hand undecodable bytes over as surrogate escapes: the same bytes, the same text."""
    escaped = data.decode("utf-8", errors="surrogateescape")
    assert textin.from_str(escaped).text == textin.decode_bytes(data).text


def test_cp949_is_read_as_korean_and_said():
    clean = textin.decode_bytes(CP949_GANADA)
    assert clean.text == "가나다" and "CP949" in clean.note


@hypothesis.settings(max_examples=40)
@hypothesis.given(st.binary(min_size=1, max_size=80))
def test_any_typed_bytes_join_the_text_and_continue(demo, new_session, data):
    """What the REPL does with a typed line: clean it, add it, continue — never an exception."""
    session = new_session(demo, seed=1, max_new_tokens=3)
    session.add_line("대한민국")
    line = textin.from_str(data.decode("utf-8", errors="surrogateescape"), "the line").text
    session.add_line(line)
    for _ in session.generate():
        pass
    assert session.text.startswith("대한민국") and line.strip() in session.text


def test_invalid_utf8_on_stdin_is_read_and_said():
    result = korepl("--demo", "--max-new-tokens", "5", "--seed", "1", stdin=b"\xff\xfe\x01abc\x1b[31m\n")
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr
    assert b"neither UTF-8 nor CP949" in result.stderr and b"control characters" in result.stderr
    assert b"\x1b" not in result.stdout


def test_cp949_on_stdin_and_in_argv():
    piped = korepl("--demo", "--greedy", "--max-new-tokens", "8", stdin=CP949_GANADA)
    flag = korepl("--demo", "--greedy", "--max-new-tokens", "8", "--prompt", "가나다")
    argv = korepl("--demo", "--greedy", "--max-new-tokens", "8", b"--prompt", CP949_GANADA)
    assert piped.returncode == flag.returncode == argv.returncode == 0, (piped.stderr, argv.stderr)
    assert piped.stdout == flag.stdout == argv.stdout and flag.stdout.strip()
    assert b"CP949" in piped.stderr and b"CP949" in argv.stderr


@pytest.mark.parametrize("args", [(b"--prompt", b"\xff\xfe"), (b"--prompt", "국민은", b"--ban", b"\xff"),
                                  (b"--prompt", "국민은", b"--stop", b"\xc3")])
def test_bytes_in_flags_never_raise(args):
    result = korepl("--demo", "--max-new-tokens", "4", *args)
    assert b"Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert b"\xef\xbf\xbd" in result.stderr or b"korepl:" in result.stderr  # the U+FFFD note


def test_one_shot_says_why_it_stopped_on_stderr_only():
    result = korepl("--demo", "--greedy", "--max-new-tokens", "200", "--stop", "다.", "--prompt", "대한민국의 모든 국민은")
    assert result.returncode == 0
    assert result.stderr.decode().startswith("korepl: stopped at the stop text 다.")
    assert "stopped" not in result.stdout.decode() and "다." not in result.stdout.decode()


@pytest.mark.parametrize("content, expected", [
    (b"[decoding]\ntop_k = " + b"1" * 5000 + b"\n", "a value korepl cannot read"),
    (b"[decoding]\ntop_k = \"" + b"7" * 5000 + b"\"\n", "top_k must be a whole number"),
    (b"a = " + b"[" * 100_000 + b"\n", "cannot read"),
    (b"\xff\xfe\x00garbage", "ignoring your settings file"),
])
def test_hostile_config_files_get_one_message_and_the_defaults(tmp_path, content, expected):
    (tmp_path / "korepl").mkdir()
    (tmp_path / "korepl" / "config.toml").write_bytes(content)
    result = korepl("--demo", "--max-new-tokens", "3", "--prompt", "국민은", env_extra={"XDG_CONFIG_HOME": str(tmp_path)})
    err = result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err
    assert "ignoring your settings file" in err and expected in err
    assert len(err.splitlines()[0]) < 300  # one readable line, not 5,000 digits


def test_a_cp949_config_file_is_read_and_said(tmp_path):
    (tmp_path / "korepl").mkdir()
    (tmp_path / "korepl" / "config.toml").write_bytes("[decoding]\nban = [\"국민\"]\ntop_k = 3\n".encode("cp949"))
    result = korepl("--demo", "--max-new-tokens", "3", "--prompt", "대한", env_extra={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 0 and b"CP949" in result.stderr and b"ignoring" not in result.stderr
