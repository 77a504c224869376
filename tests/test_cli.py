"""The one-shot command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

PROMPT = "대한민국의 모든 국민은"


def korepl(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "korepl", *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_one_shot_greedy_equals_generate(demo, hf_greedy):
    result = korepl("--demo", "--prompt", PROMPT, "--greedy", "--repetition-penalty", "2.0",
                    "--max-new-tokens", "40")
    assert result.returncode == 0, result.stderr
    ids = demo.tokenizer.encode(PROMPT)
    out = ids + hf_greedy(demo, PROMPT, 40, stops=("</s>", "</d>"), repetition_penalty=2.0)
    expected = demo.tokenizer.decode(out, clean_up_tokenization_spaces=False)[len(PROMPT):]
    assert result.stdout == expected
    assert result.stdout.strip()  # the demo model does say something
    assert result.stderr == "" or result.stderr.startswith("korepl: stopped at")


def test_piped_text_is_the_same_as_prompt():
    piped = korepl("--demo", "--greedy", "--max-new-tokens", "20", stdin=PROMPT + "\n")  # as `echo TEXT |` gives
    flag = korepl("--demo", "--greedy", "--max-new-tokens", "20", "--prompt", PROMPT)
    assert piped.returncode == flag.returncode == 0 and piped.stdout == flag.stdout


def test_stdin_prompt_and_seeded_sampling_repeat(tmp_path):
    first = korepl("--demo", "--seed", "5", "--max-new-tokens", "20", stdin=PROMPT)
    second = korepl("--demo", "--seed", "5", "--max-new-tokens", "20", stdin=PROMPT)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and first.stdout.strip()


@pytest.mark.parametrize("args, setting", [
    (["--top-k", "0"], "top_k"), (["--top-k", "abc"], "top_k"), (["--top-p", "1.5"], "top_p"),
    (["--temperature", "-1"], "temperature"), (["--sampler", "random"], "sampler"),
    (["--max-new-tokens", "0"], "max_new_tokens"), (["--seed", "x"], "seed"),
    (["--newline", "<no-such-token>"], "newline"), (["--probs", "--window-warn", "2"], "window_warn"),
])
def test_bad_flag_values_exit_2_with_one_line(args, setting):
    result = korepl("--demo", "--prompt", PROMPT, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"korepl: {setting} must be") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_missing_folder_exits_2_with_the_paragraph(tmp_path):
    result = korepl("--model", str(tmp_path / "nowhere"), "--prompt", PROMPT)
    assert result.returncode == 2 and result.stdout == ""
    assert "could not load the model" in result.stderr and "--demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_folder_without_weights_exits_2(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "tokenizer.json").write_text("{}")
    result = korepl("--model", str(tmp_path), "--prompt", PROMPT)
    assert result.returncode == 2
    assert "could not load the model" in result.stderr and "the folder has no weights" in result.stderr
    assert "Traceback" not in result.stderr


def test_folder_with_broken_weights_exits_2(tmp_path):
    from korepl.loading import DEMO_MODEL_DIR

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((DEMO_MODEL_DIR / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not really safetensors")
    result = korepl("--model", str(tmp_path), "--prompt", PROMPT)
    assert result.returncode == 2 and "could not load the model" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_hub_id_not_cached_offline_exits_2_at_once():
    result = korepl("--model", "nobody-here/no-such-model", "--prompt", PROMPT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("korepl could not load the model 'nobody-here/no-such-model': "
                                    "it is not in the local cache")
    assert "network" in result.stderr and "--model" in result.stderr and "--demo" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_hub_id_from_the_local_cache(tmp_path, demo):
    """A hub id that was downloaded before loads from the hub cache (laid out as huggingface_hub does)."""
    import shutil

    from korepl.loading import DEMO_MODEL_DIR

    repo = tmp_path / "hub" / "models--someone--kogpt2-demo"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(DEMO_MODEL_DIR, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "korepl", "--model", "someone/kogpt2-demo", "--prompt", PROMPT,
                             "--greedy", "--max-new-tokens", "20"], capture_output=True, text=True, env=env,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    demo_run = korepl("--demo", "--prompt", PROMPT, "--greedy", "--max-new-tokens", "20")
    assert result.stdout == demo_run.stdout and result.stdout.strip()


def test_no_stop_and_custom_stop_text():
    free = korepl("--demo", "--prompt", PROMPT, "--greedy", "--no-stop", "--max-new-tokens", "30")
    assert free.returncode == 0 and free.stdout
    word = free.stdout.split()[2]
    stopped = korepl("--demo", "--prompt", PROMPT, "--greedy", "--no-stop", "--stop", word,
                     "--max-new-tokens", "30")
    assert stopped.returncode == 0
    assert word not in stopped.stdout and free.stdout.startswith(stopped.stdout)


def test_backend_flags_layer_over_the_config():
    import dataclasses

    from korepl.cli import build_parser, config_from_args
    from korepl.settings import load_defaults

    base = dataclasses.replace(load_defaults(), backend="http://from-the-file:8080")
    assert config_from_args(build_parser().parse_args([]), base).backend == "http://from-the-file:8080"
    flagged = config_from_args(build_parser().parse_args(["--backend", "127.0.0.1:9000", "--insecure"]), base)
    assert (flagged.backend, flagged.insecure) == ("127.0.0.1:9000", True)
    assert config_from_args(build_parser().parse_args(["--backend", ""]), base).backend == ""  # run it here


def test_a_bad_backend_address_is_one_line():
    result = korepl("--demo", "--backend", "ftp://nowhere", "--prompt", PROMPT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["korepl: not a server address: 'ftp://nowhere' (give one such as "
                                                  "http://127.0.0.1:8080)"]
