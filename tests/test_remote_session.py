"""korepl with a serving engine as its model (`--backend`): the same session, token ids from a real
llama.cpp server (the `llama` fixture of conftest.py, the demo model as GGUF f32 on 127.0.0.1).

What is checked against korepl's own decoding of the same model: greedy ids (one-shot and in a
session, across a window slide), /peek's top-N, stop texts, the special tokens banned; and what
stays korepl's: undo, retry, the turn tree, settings the server cannot honour refused with one line,
a server killed mid-answer leaving the session as it was shown (and the session going on once the
server is back on its port), an answer held past the read timeout or cut mid-event by a loopback
proxy (tests/proxy.py: every byte is the real server's), a real Ctrl+C in the REPL mid-stream, and
the API key never written anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from korepl import backend, store
from korepl.loading import DEMO_MODEL_DIR
from korepl.remote import RemoteError
from korepl.session import Session
from korepl.settings import SettingError

import conftest  # noqa: E402
from conftest import LlamaServer, free_port  # noqa: E402
from proxy import Plan, Proxy  # noqa: E402
from test_repl_pty import ANSI, PROMPT as SCREEN_PROMPT, Terminal  # noqa: E402

PROMPT = "수강신청에서 원하는 강의를 신청하기 위해서는"
SECRET = "korepl-test-secret-8c1f"


@pytest.fixture(scope="module")
def remote_demo(llama):
    """The demo model's tokenizer here, its weights in llama-server."""
    return backend.load_remote(str(DEMO_MODEL_DIR), llama.url)


def run_korepl(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "korepl", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))


def consistent(session) -> bool:
    """The ids are what was shown: the turn holds them, and they read as the text."""
    return (session.ids == session.turn.ids() and session.text == session.turn.text()
            and session.decode(session.ids).strip() == session.text.strip())


# --- loading ---------------------------------------------------------------------------------------

def test_the_remote_model_is_the_tokenizer_and_the_server(remote_demo, llama, demo):
    assert remote_demo.remote.engine.name == "llama.cpp"
    assert remote_demo.where == "remote" and remote_demo.precision == "the server's"
    assert remote_demo.window == 1023  # the server's 1024 positions, less one for the next token
    assert remote_demo.tokenizer.get_vocab() == demo.tokenizer.get_vocab()
    assert remote_demo.remote.engine.vocab_size == len(demo.tokenizer)


def test_a_tokenizer_of_another_vocabulary_is_refused(llama, kogpt2_shaped):
    with pytest.raises(RemoteError) as caught:
        backend.load_remote(kogpt2_shaped.name, llama.url)
    message = str(caught.value)
    assert llama.url in message and "4096" in message and "51200" in message and "\n" not in message


# --- one-shot --------------------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", ["1.0", "2.0"])
def test_one_shot_prints_what_the_local_model_prints(llama, penalty):
    flags = ["--prompt", PROMPT, "--greedy", "--repetition-penalty", penalty, "--max-new-tokens", "30"]
    local = run_korepl("--demo", *flags)
    remote = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", llama.url + "/v1", *flags)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and len(local.stdout) > 20


def test_one_shot_falls_back_from_what_the_server_cannot_do(llama):
    done = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", llama.url, "--prompt", PROMPT, "--greedy",
                      "--no-repeat-ngram-size", "3", "--max-new-tokens", "5")
    assert done.returncode == 0
    assert f"korepl: {llama.url} (llama.cpp) has no n-gram blocking: using no_repeat_ngram_size off" in done.stderr
    assert done.stdout


def test_insecure_warns_in_one_line(llama):
    done = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", llama.url, "--insecure", "--prompt", PROMPT,
                      "--max-new-tokens", "3")
    assert done.returncode == 0 and done.stdout
    assert done.stderr.splitlines()[0] == backend.INSECURE_WARNING


def test_one_shot_with_no_server_says_so_in_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", url, "--prompt", PROMPT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and url in done.stderr and "connection refused" in done.stderr
    assert "Traceback" not in done.stderr


# --- the session over the server ----------------------------------------------------------------------

def test_greedy_session_equals_local_then_undo_and_retry(remote_demo, demo, new_session):
    changes = dict(greedy=True, repetition_penalty=2.0, max_new_tokens=40)
    local, remote = new_session(demo, **changes), new_session(remote_demo, **changes)
    for session in (local, remote):
        session.add_line(PROMPT)
        assert "".join(step.text for step in session.generate())
    assert remote.ids == local.ids and remote.text == local.text
    assert remote.last_ending == local.last_ending and remote.last_stats.decode_tokens == 40
    assert consistent(remote)
    first = list(remote.ids)

    remote.undo()
    assert remote.turn.kind == "typed" and remote.text == PROMPT
    remote.redo()
    assert remote.ids == first
    remote.settings = dataclasses.replace(remote.settings, greedy=False, top_k=20, seed=7)
    retried = "".join(step.text for step in remote.retry())
    assert retried and consistent(remote)
    assert len(remote.alternatives()) == 2
    remote.switch(1)
    assert remote.ids == first and consistent(remote)


def test_a_repetition_window_is_llama_cpps_repeat_last_n(remote_demo, demo, new_session):
    """Penalising only the last 6 ids writes something else than penalising all (checked), and the same as here."""
    results = {}
    for window in (6, None):
        changes = dict(greedy=True, repetition_penalty=3.0, repetition_window=window, max_new_tokens=40)
        local, remote = new_session(demo, **changes), new_session(remote_demo, **changes)
        for session in (local, remote):
            session.add_line(PROMPT)
            list(session.generate())
        assert remote.ids == local.ids and consistent(remote)
        results[window] = remote.ids
    assert results[6] != results[None]


def test_the_memory_is_sent_first_as_here(remote_demo, demo, new_session):
    changes = dict(greedy=True, repetition_penalty=1.0, max_new_tokens=25, memory="대한민국 헌법 제1조")
    local, remote = new_session(demo, **changes), new_session(remote_demo, **changes)
    for session in (local, remote):
        session.add_line("모든 국민은")
        list(session.generate())
    assert remote.memory_tokens == local.memory_tokens > 0
    assert remote.ids == local.ids and remote.text == local.text


def test_a_seed_makes_the_remote_session_reproducible_and_retries_differ(remote_demo, new_session):
    def texts(peek_first=False):
        session = new_session(remote_demo, greedy=False, top_k=50, seed=11, max_new_tokens=20, stop=())
        session.add_line(PROMPT)
        if peek_first:
            assert session.peek(3)  # changes nothing, the random stream included
        first = "".join(step.text for step in session.generate())
        second = "".join(step.text for step in session.retry())
        return first, second

    once, again = texts(), texts(peek_first=True)
    assert once == again
    assert once[0] != once[1]  # each continuation draws on from the seed's stream, as korepl's own does


def test_the_window_slides_as_it_does_here(remote_demo, demo, new_session):
    """A 1023-position window both ways: a greedy run past it slides at the same token, to the same ids.

    No repetition penalty: llama.cpp's logits differ from torch's by up to ~1e-3 (ggml's GELU goes
    through a float16 table), which over a thousand penalised greedy steps flips a near-tie (seen at
    step 55 with penalty 1.3: 4.5126 vs 4.5117); the unpenalised run loops with wide margins.
    """
    local_model = dataclasses.replace(demo, window_size=remote_demo.window)
    changes = dict(greedy=True, repetition_penalty=1.0, max_new_tokens=1100, stop=())
    local, remote = new_session(local_model, **changes), new_session(remote_demo, **changes)
    for session in (local, remote):
        session.add_line(PROMPT)
        for _ in session.generate():
            pass
    assert remote.slides == local.slides >= 1
    assert remote.view_start == local.view_start
    assert remote.ids == local.ids


def test_stopping_a_continuation_closes_the_stream_and_keeps_what_was_shown(remote_demo, llama, new_session):
    """What Ctrl+C does (the printer closes the steps): the request ends at once, unshown tokens are dropped."""
    import time

    session = new_session(remote_demo, greedy=False, top_k=50, seed=2, max_new_tokens=4000, stop=(), probs=True)
    session.add_line(PROMPT)
    steps = session.generate()
    shown = "".join(next(steps).text for _ in range(5))
    steps.close()
    assert session.last_ending.reason == "interrupted"
    assert session.text == PROMPT + shown and consistent(session)
    deadline = time.monotonic() + 15
    while any(slot.get("is_processing") for slot in llama.get("/slots")):
        assert time.monotonic() < deadline, "the server kept generating for a closed stream"
        time.sleep(0.1)
    session.settings = dataclasses.replace(session.settings, max_new_tokens=5)
    assert "".join(step.text for step in session.generate()) and consistent(session)
    assert all(0 < step.probability <= 1 for step in session.retry())  # /probs: the server's probabilities


def test_peek_lists_the_servers_top_n(remote_demo, demo, new_session):
    local, remote = (new_session(m, greedy=True, repetition_penalty=1.0) for m in (demo, remote_demo))
    for session in (local, remote):
        session.feed(PROMPT)
    listed = remote.peek(5)
    expected = local.peek(5)
    assert [c.token_id for c in listed] == [c.token_id for c in expected]
    assert [c.probability for c in listed] == pytest.approx([c.probability for c in expected], abs=1e-4)
    assert listed[0].chance == 1.0 and all(c.chance == 0 and c.outside for c in listed[1:])
    ids_before = list(remote.ids)
    assert remote.ids == ids_before and remote.pending == 0  # peeking changed nothing

    remote.settings = dataclasses.replace(remote.settings, greedy=False, top_k=3, seed=1)
    sampled = remote.peek(5)
    in_set = [c for c in sampled if c.in_set]
    assert 1 <= len(in_set) <= 3
    assert sum(c.chance for c in in_set) == pytest.approx(1.0, abs=1e-3)
    steps = list(remote.pick(1))
    assert steps[0].token_id == in_set[0].token_id and consistent(remote)


def test_settings_the_server_cannot_honour_are_refused_in_one_line(remote_demo, new_session, llama):
    session = new_session(remote_demo)
    for name, value in (("sampler", "uniform"), ("ban", ("정한다",)), ("no_repeat_ngram_size", 3),
                        ("min_new_tokens", 2)):
        with pytest.raises(SettingError) as caught:
            session.settings = dataclasses.replace(session.settings, **{name: value})
        message = str(caught.value)
        assert message.startswith(f"{llama.url} (llama.cpp) ") and name in message and "\n" not in message
    assert session.settings.sampler == "softmax" and session.settings.ban == ()  # nothing changed
    with pytest.raises(SettingError, match="repetition_penalty"):  # the server would penalise the memory too
        session.settings = dataclasses.replace(session.settings, memory="등장인물: 철수", repetition_penalty=2.0)
    session.settings = dataclasses.replace(session.settings, memory="등장인물: 철수", repetition_penalty=1.0)
    with pytest.raises(SettingError):
        Session(remote_demo, dataclasses.replace(session.settings, sampler="uniform"))


def test_a_saved_session_with_a_refused_setting_is_refused_whole(remote_demo, demo, new_session, tmp_path):
    local = new_session(demo, ban=("정한다",), max_new_tokens=5)
    local.add_line(PROMPT)
    list(local.generate())
    data = store.to_json(local)
    remote = new_session(remote_demo)
    with pytest.raises(store.StoreError, match="its settings cannot be used here: .*ban is refused"):
        store.restore(remote, data, "saved.json")
    assert remote.ids == [] and remote.text == ""  # nothing changed
    data["settings"]["ban"] = []
    store.restore(remote, data, "saved.json")
    assert remote.ids == local.ids and remote.text == local.text


def test_a_server_killed_mid_answer_leaves_what_was_shown(llama_files, tmp_path, new_session, monkeypatch):
    server = LlamaServer(llama_files, tmp_path / "doomed.log")
    try:
        loaded = backend.load_remote(str(DEMO_MODEL_DIR), server.url)
        session = new_session(loaded, greedy=True, repetition_penalty=1.2, max_new_tokens=1000, stop=())
        session.add_line(PROMPT)
        steps = session.generate()
        shown = ""
        with pytest.raises(RemoteError) as caught:
            for number, step in enumerate(steps):
                shown += step.text
                if number == 3:
                    server.process.send_signal(signal.SIGKILL)
                    server.process.wait()
        message = str(caught.value)
        assert server.url in message and "\n" not in message
        assert session.last_ending.reason == "failed"
        assert session.text == PROMPT + shown
        assert consistent(session) and session.turn.kind == "generated"
        with pytest.raises(RemoteError, match="connection refused"):
            list(session.generate())
        assert session.text == PROMPT + shown and consistent(session)
        session.undo()  # the moves need no server
        assert session.text == PROMPT
        session.redo()
        assert session.text == PROMPT + shown

        # The server comes back on the same port: the same session goes on from what was shown.
        monkeypatch.setattr(conftest, "free_port", lambda: server.port)
        server = LlamaServer(llama_files, tmp_path / "again.log")
        session.settings = dataclasses.replace(session.settings, max_new_tokens=8)
        more = "".join(step.text for step in session.generate())
        assert more and session.text == PROMPT + shown + more
        assert session.last_ending.reason == "max-tokens" and consistent(session)
        session.undo()
        assert session.text == PROMPT + shown and consistent(session)
    finally:
        server.stop()


def wait_idle(server, seconds: float = 15.0) -> None:
    """Until the server generates for no one (a closed stream ends its request)."""
    import time

    deadline = time.monotonic() + seconds
    while any(slot.get("is_processing") for slot in server.get("/slots")):
        assert time.monotonic() < deadline, "the server kept generating for a closed stream"
        time.sleep(0.1)


@pytest.mark.parametrize("then, words", [("stall", "no answer in 1 s"),
                                         ("cut", "the server closed the connection mid-answer")])
def test_a_slow_or_cut_answer_leaves_what_was_shown(llama, remote_demo, new_session, then, words):
    """The real server behind a loopback proxy that holds (or cuts) its answer a few bytes into an event."""
    import time

    from korepl.remote import probe

    proxy = Proxy(llama.port)
    try:
        loaded = dataclasses.replace(remote_demo, remote=probe(proxy.url, read_timeout=1))
        session = new_session(loaded, greedy=True, repetition_penalty=1.0, max_new_tokens=200, stop=())
        session.add_line(PROMPT)
        proxy.plan = Plan(events=6, then=then)
        shown, started = "", time.monotonic()
        with pytest.raises(RemoteError) as caught:
            for step in session.generate():
                shown += step.text
        message = str(caught.value)
        assert message.startswith(f"{proxy.url}/completion: {words}") and "\n" not in message
        assert time.monotonic() - started < 15 and proxy.done.is_set()
        assert shown and session.last_ending.reason == "failed"
        assert session.text == PROMPT + shown and consistent(session) and session.turn.kind == "generated"
        wait_idle(llama)
        # The next answer comes whole through the same proxy: the session goes on from what was shown.
        session.settings = dataclasses.replace(session.settings, max_new_tokens=6)
        more = "".join(step.text for step in session.generate())
        assert more and session.text == PROMPT + shown + more and consistent(session)
        assert session.last_ending.reason == "max-tokens"
    finally:
        proxy.close()


def test_a_stop_text_ends_the_remote_session_as_here(remote_demo, demo, new_session):
    # The greedy text runs " ⑤대통령을 ⑤핵을 ...": '통령' stops it inside the token '대통령', whose '대' stays.
    changes = dict(greedy=True, repetition_penalty=1.0, max_new_tokens=40, stop=("통령",))
    local, remote = new_session(demo, **changes), new_session(remote_demo, **changes)
    for session in (local, remote):
        session.add_line(PROMPT)
        list(session.generate())
    assert local.last_ending.reason == "stop-text" and local.last_ending.detail == "통령"
    assert local.text == PROMPT + " ⑤대"
    assert remote.ids == local.ids and remote.text == local.text
    assert remote.last_ending == local.last_ending and consistent(remote)


def test_special_tokens_are_never_written_by_the_server(remote_demo, demo, new_session):
    """korepl's suppressed special tokens go to the server as a ban (logit_bias): it never picks one."""
    changes = dict(greedy=True, repetition_penalty=1.0, max_new_tokens=6, stop=())
    local, remote = new_session(demo, **changes), new_session(remote_demo, **changes)
    for session in (local, remote):
        session.feed(" ")  # after which the model's likeliest token is <unk>
    suppressed = remote.controls.suppress_ids
    unbanned = next(iter(remote_demo.remote.stream(remote.ids, max_tokens=1, temperature=0.0, top_k=1)))
    assert unbanned.id in suppressed  # what the server writes when nothing is banned
    for session in (local, remote):
        list(session.generate())
    assert remote.ids == local.ids and not suppressed & set(remote.ids[1:]) and consistent(remote)


def test_the_api_key_comes_from_a_command_and_is_never_written(llama_files, tmp_path):
    server = LlamaServer(llama_files, tmp_path / "keyed.log", extra=("--api-key", SECRET))
    try:
        with pytest.raises(RemoteError) as caught:
            backend.load_remote(str(DEMO_MODEL_DIR), server.url)
        assert "API key" in str(caught.value) and "\n" not in str(caught.value)
        config = tmp_path / "config" / "korepl"
        config.mkdir(parents=True)
        (config / "config.toml").write_text(f'api_key_command = "echo {SECRET}"\n')
        done = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", server.url, "--prompt", PROMPT,
                          "--max-new-tokens", "5", env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
        assert done.returncode == 0 and done.stdout, done.stderr
        (config / "config.toml").write_text('api_key_command = "false"\n')
        done = run_korepl("--model", str(DEMO_MODEL_DIR), "--backend", server.url, "--prompt", PROMPT,
                          env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
        assert done.returncode == 2 and "api_key_command exited with 1" in done.stderr
    finally:
        server.stop()


# --- the REPL ----------------------------------------------------------------------------------------

def test_the_repl_with_a_backend(llama, tmp_path):
    term = Terminal(tmp_path, model=("--model", str(DEMO_MODEL_DIR), "--backend", llama.url),
                    extra_env={"KOREPL_API_KEY": SECRET})
    try:
        term.wait_ready()
        settings = term.run("/settings")
        assert re.search(rf"backend\s+{re.escape(llama.url)} \(llama\.cpp\)\n", settings)
        assert re.search(r"device\s+remote\n", settings)
        term.run("/greedy")
        out = term.run(PROMPT)
        continuation = out.split(PROMPT, 1)[1].strip()
        assert continuation
        assert continuation.replace(" ", "")[:6] in term.run("/context").replace(" ", "")
        term.run("/undo")
        assert continuation.replace(" ", "")[:6] not in term.run("/context").replace(" ", "")
        peek = term.run("/peek 3")
        assert "chance of being picked now" in peek and re.search(r"\n\s+1\.\s+100\.00%", peek)
        refused = term.run("/sample uniform")
        assert f"{llama.url} (llama.cpp) has no uniform sampler" in refused.replace("\n", "")
        assert re.search(r"sampler\s+softmax\n", term.run("/settings"))
        assert term.close() == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
    assert SECRET not in term.log
    files = list((tmp_path / "state").rglob("*"))
    assert any(f.suffix == ".json" for f in files)
    for path in files:
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    saved = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert saved["model"]["name"] == str(DEMO_MODEL_DIR)


def test_ctrl_c_mid_stream_in_the_repl_then_retry_and_alt(llama, tmp_path):
    """A real Ctrl+C while the server streams: the shown text stays, the request ends, the REPL goes on."""
    import time

    import pexpect

    term = Terminal(tmp_path, model=("--model", str(DEMO_MODEL_DIR), "--backend", llama.url))
    try:
        term.wait_ready()
        term.run("/max 4096")
        term.run("/seed 3")
        assert "stop = (none)" in term.run("/stop del </s>") + term.run("/stop del </d>")
        cancelled = llama.log.read_text(errors="replace").count("cancel task")
        term.send("헌법 제1조")
        term.child.expect("헌법 제1조")  # the echo
        # The server has streamed enough to compare: 30 syllables (what is between may be terminal codes).
        term.child.expect(r"(?:[\uac00-\ud7a3][^\uac00-\ud7a3]{0,80}){30}")
        # At once: the server writes a whole window's request (~1000 tokens) in about 0.3 s here, and a Ctrl+C
        # after it has finished finds nothing to cancel (a wait of 0.3 s made this check fail one CI run in a few).
        term.child.sendcontrol("c")
        streamed = ANSI.sub("", term.child.after)  # the 30 syllables, then what came until the Ctrl+C
        out = term.until(SCREEN_PROMPT)
        assert "[stopped; what was written stays]" in out and "Traceback" not in out
        shown_tail = re.sub(r"\s", "", streamed + out.split("[stopped")[0].replace("^C", ""))[-20:]
        context = term.run("/context")
        count = int(re.search(r"(\d+) tokens in the text", context).group(1))
        assert 5 < count < 4096 and len(shown_tail) == 20
        assert re.sub(r"\s", "", context).endswith(shown_tail)  # what was shown last is what was kept
        wait_idle(llama)
        # Ctrl+C closed the request: the server cancelled it (rather than writing on into the window)
        deadline = time.monotonic() + 10
        while llama.log.read_text(errors="replace").count("cancel task") == cancelled:
            assert time.monotonic() < deadline, "the server did not see the request end"
            time.sleep(0.1)
        term.run("/max 8")
        first = term.run("국민은").split("국민은", 1)[1].strip()
        assert first and "Traceback" not in first
        term.run("/retry")
        listing = term.run("/alt")
        assert re.search(r"\n 1\. .+\n\*2\. .+\n", listing)
        assert "alternative 1" in term.run("/alt 1")
        assert re.sub(r"\s", "", first)[:6] in re.sub(r"\s", "", term.run("/context"))
        term.send("/quit")
        term.child.expect(pexpect.EOF, timeout=30)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_the_repl_when_the_server_dies(llama_files, tmp_path):
    server = LlamaServer(llama_files, tmp_path / "doomed.log")
    term = Terminal(tmp_path, model=("--model", str(DEMO_MODEL_DIR), "--backend", server.url))
    try:
        term.wait_ready()
        term.run("/max 8")
        first = term.run("대한민국")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        out = term.run("국민은")
        assert f"{server.url}" in out and "connection refused" in out and "Traceback" not in out
        context = term.run("/context")
        assert "국민은" in context and first.split("대한민국", 1)[1].strip()[:4] in context
        term.send("/quit")
        term.child.expect(SCREEN_PROMPT + "|" + "saved to", timeout=30)
    finally:
        server.stop()
        if term.child.isalive():
            term.child.terminate(force=True)


def test_default_config_runs_the_model_here():
    from korepl.settings import load_defaults

    config = load_defaults()
    assert config.backend == "" and config.api_key_command == ""


def test_backend_command_switches_and_keeps_the_text(llama, tmp_path):
    term = Terminal(tmp_path)  # --demo: the model runs here
    try:
        assert "backend: none (the model runs here)" in term.run("/backend")
        term.run("/greedy")
        term.run("/max 10")
        local = term.run("대한민국의 모든 국민은").split("국민은", 1)[1].strip()
        assert "not a server address" in term.run("/backend ftp://x")
        assert "in the background" in term.run(f"/backend {llama.url}/v1")
        for _ in range(120):
            out = term.run("/backend")
            if f"backend: {llama.url} (llama.cpp)" in out:
                break
        else:
            raise AssertionError("the backend did not take over")
        assert "now writing with demo on" in term.log.replace("\n", "")
        assert local.replace(" ", "")[:6] in term.run("/context").replace(" ", "")
        assert re.search(r"device\s+remote\n", term.run("/settings"))
        assert term.run("헌법").split("헌법", 1)[1].strip()  # a continuation from the server
        term.run("/backend off")
        for _ in range(120):
            if "backend: none (the model runs here)" in term.run("/backend"):
                break
        else:
            raise AssertionError("the model did not come back here")
        assert re.search(r"device\s+cpu\n", term.run("/settings"))
        assert term.close() == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)


def test_export_with_a_backend_needs_the_tokenizer_not_the_weights(remote_demo, new_session, llama, tmp_path):
    """`--resume --export` with a backend reads the tokenizer (here from a folder without weights) and asks the server."""
    session = new_session(remote_demo, greedy=True, max_new_tokens=12)
    session.add_line(PROMPT)
    list(session.generate())
    store.save(session, tmp_path / "s.json")
    tokenizer_only = tmp_path / "tokenizer-only"
    tokenizer_only.mkdir()
    for name in os.listdir(DEMO_MODEL_DIR):
        if not name.endswith(".safetensors") and (DEMO_MODEL_DIR / name).is_file():
            shutil.copy(DEMO_MODEL_DIR / name, tokenizer_only / name)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_STATE_HOME": str(tmp_path / "state")}
    out = run_korepl("--model", str(tokenizer_only), "--backend", llama.url, "--resume", str(tmp_path / "s.json"),
                     "--export", str(tmp_path / "out.txt"), env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == session.text
    dead = f"http://127.0.0.1:{free_port()}"
    out = run_korepl("--model", str(tokenizer_only), "--backend", dead, "--resume", str(tmp_path / "s.json"),
                     "--export", str(tmp_path / "again.txt"), env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and dead in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "again.txt").exists()
