"""korepl's remote backend against a real llama.cpp server (the demo model as GGUF, scripts/llama_server.py).

Two measurements:
- korepl's time per token over the server ÷ the server's own `/completion` stream read by a bare
  client, for the same request (same ids, settings and prompt-cache state): what korepl adds;
- `/retry` after ~800 tokens of context, warm (the server's slot still holds the context: its
  prefix cache) and cold (another text went through the slot in between, so the whole context is
  read again).  The server itself says how many prompt tokens it ran, and how long that took (/metrics).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks.fixtures import drain, free_port, stop_process
from benchmarks.plan import Bench
from benchmarks.registry import Result, Row, Section, Skipped
from benchmarks.workload import PROMPT, REPETITION_PENALTY, context_text, greedy_settings, prefilled_session
from korepl import backend
from korepl.loading import DEMO_MODEL_DIR, LoadedModel
from korepl.remote import LLAMA_CPP_SAMPLERS
from korepl.session import Session

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "llama_server.py"
CANNOT_BUILD = 3  # scripts/llama_server.py: nothing cached, and no compiler or cmake here
REPEATS = 5  # each run is short (the demo model is small); a few more turns steady the ratio
RETRY_CONTEXT = 800
RETRY_TOKENS = 16


# --- the server ------------------------------------------------------------------------------------

def server_files() -> dict | str:
    """{"server", "gguf"} from scripts/llama_server.py (built once and cached), or why there are none."""
    done = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--json"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if done.returncode == CANNOT_BUILD:
        return done.stderr.strip().splitlines()[-1]
    if done.returncode != 0:
        raise RuntimeError("scripts/llama_server.py failed:\n" + done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


class Server:
    """llama-server on 127.0.0.1 with the tests' flags, plus /metrics (the prompt figures) and no RAM prompt cache.

    --cache-ram 0: a slot that another text has taken cannot be restored from memory, so the cold
    retry really re-reads its context.
    """

    def __init__(self, files: dict, threads: int, log: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [files["server"], "-m", files["gguf"], "--host", "127.0.0.1", "--port", str(port),
                 "-c", "1024", "-np", "1", "-t", str(threads), "--no-webui", "--metrics", "--cache-ram", "0"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_healthy(self, seconds: float = 60.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server not healthy in {seconds:g} s:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return answer.read()

    def idle(self) -> None:
        """Wait for the slot to finish: korepl closes a stream at its last token, before the server's last event."""
        while any(slot.get("is_processing") for slot in json.loads(self.get("/slots"))):
            time.sleep(0.002)

    def prompt_counters(self) -> tuple[float, float]:
        """(prompt tokens run, seconds spent on them) since the server started: llama.cpp's own counters."""
        self.idle()
        values = dict(line.split() for line in self.get("/metrics").decode().splitlines()
                      if line.startswith("llamacpp:prompt_"))
        return float(values["llamacpp:prompt_tokens_total"]), float(values["llamacpp:prompt_seconds_total"])

    def stop(self) -> None:
        stop_process(self.process)


# --- one request, two ways -------------------------------------------------------------------------

class Marks(NamedTuple):
    """One request's timeline: seconds to the first token and to the last, and the ids it gave."""

    first_s: float
    last_s: float
    ids: list[int]

    def per_token_after_first(self) -> float:
        return (self.last_s - self.first_s) / max(1, len(self.ids) - 1)


def completion_body(session: Session, ids: list[int], new_tokens: int) -> dict:
    """What korepl's session sends for a greedy continuation (korepl.remote's llama.cpp body), written out here."""
    return {"prompt": ids, "n_predict": new_tokens, "stream": True, "return_tokens": True, "cache_prompt": True,
            "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": REPETITION_PENALTY,
            "repeat_last_n": len(ids) + new_tokens, "samplers": LLAMA_CPP_SAMPLERS, "seed": -1, "ignore_eos": False,
            "logit_bias": [[i, False] for i in sorted(session.controls.suppress_ids)]}


def server_stream(url: str, body: dict) -> Marks:
    """The server's own stream read by a bare client, timed from the request to the last token."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
    ids: list[int] = []
    first = last = 0.0
    try:
        start = time.perf_counter()
        connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        for line in response:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if event.get("tokens"):
                ids += event["tokens"]
                last = time.perf_counter() - start
                first = first or last
            if event.get("stop") or len(ids) >= body["n_predict"]:
                break  # at the last token, as korepl stops reading
    finally:
        connection.close()
    return Marks(first, last, ids)


def korepl_stream(session: Session) -> Marks:
    """korepl's session writing the same continuation, timed from the call to its last shown text."""
    start = time.perf_counter()
    first = last = 0.0
    before = len(session.ids)
    for _ in session.generate():
        last = time.perf_counter() - start
        first = first or last
    last = time.perf_counter() - start  # generate's own ending (the last text, the turn) counts too
    return Marks(first, last, session.ids[before:])


def take_turns(runs: dict[str, Callable[[], Marks]], repeats: int, ready: Callable[[], None]) -> dict[str, list[Marks]]:
    """Each run once untimed (both paths and the server's prompt cache warm), then in turns A B A B ...

    `ready` comes before every run: both start on an idle server, whatever the run before left it doing.
    """
    for run in runs.values():
        ready()
        run()
    marks: dict[str, list[Marks]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            ready()
            marks[name].append(run())
    return marks


# --- the measurements ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Overhead(Result):
    new_tokens: int
    korepl_s: float  # request to last token, best of the repeats
    server_s: float
    korepl_over_server: float
    korepl_step_s: float  # per token after the first (best of the repeats)
    server_step_s: float
    korepl_step_over_server: float
    same_ids: bool
    korepl_times_s: list[float] = field(repr=False)
    server_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class Retry(Result):
    context_tokens: int
    new_tokens: int
    warm_s: float  # korepl's /retry, call to last token (best of the repeats)
    cold_s: float
    cold_over_warm: float
    warm_prompt_tokens: float  # what the server ran of the prompt (median), and its milliseconds (best)
    warm_prompt_ms: float
    cold_prompt_tokens: float
    cold_prompt_ms: float
    warm_times_s: list[float] = field(repr=False)
    cold_times_s: list[float] = field(repr=False)


@dataclass(frozen=True)
class Remote(Result):
    server: str
    threads: int
    overhead: Overhead
    retry: Retry


def measure_overhead(loaded: LoadedModel, server: Server, new_tokens: int) -> Overhead:
    settings = greedy_settings(new_tokens)

    def korepl() -> Marks:
        session = Session(loaded, settings)
        session.feed(PROMPT)  # tokenizing is not the server's part; both time from the request on
        return korepl_stream(session)

    probe = Session(loaded, settings)
    probe.feed(PROMPT)
    body = completion_body(probe, probe.ids, new_tokens)
    marks = take_turns({"korepl": korepl, "server": lambda: server_stream(server.url, body)}, REPEATS, server.idle)
    ours, theirs = marks["korepl"], marks["server"]
    for run in ours + theirs:
        if len(run.ids) != new_tokens:
            raise RuntimeError(f"asked for {new_tokens} tokens, got {len(run.ids)}")
    best = {name: min(m.last_s for m in runs) for name, runs in marks.items()}
    step = {name: min(m.per_token_after_first() for m in runs) for name, runs in marks.items()}
    return Overhead(new_tokens=new_tokens, korepl_s=best["korepl"], server_s=best["server"],
                    korepl_over_server=best["korepl"] / best["server"], korepl_step_s=step["korepl"],
                    server_step_s=step["server"], korepl_step_over_server=step["korepl"] / step["server"],
                    same_ids=all(m.ids == theirs[0].ids for m in ours + theirs),
                    korepl_times_s=[m.last_s for m in ours], server_times_s=[m.last_s for m in theirs])


def measure_retry(loaded: LoadedModel, server: Server) -> Retry:
    session = prefilled_session(loaded, context_text(loaded, RETRY_CONTEXT), greedy_settings(RETRY_TOKENS))
    drain(session)  # the continuation to retry
    other = {"prompt": [(session.ids[0] + 1) % len(loaded.tokenizer)], "n_predict": 1}  # differs from the first id

    def retry(evict: bool) -> tuple[float, float, float]:
        """korepl's /retry: (wall seconds, prompt tokens the server ran, their seconds)."""
        if evict:  # someone else's request took the slot: the context is no longer in it
            urllib.request.urlopen(urllib.request.Request(server.url + "/completion", json.dumps(other).encode(),
                                                          {"Content-Type": "application/json"}), timeout=60).read()
        tokens, seconds = server.prompt_counters()
        start = time.perf_counter()
        drain(session.retry())
        wall = time.perf_counter() - start
        after_tokens, after_seconds = server.prompt_counters()
        if session.last_ending.new_tokens != RETRY_TOKENS:
            raise RuntimeError(f"asked for {RETRY_TOKENS} tokens, got {session.last_ending.new_tokens}")
        return wall, after_tokens - tokens, after_seconds - seconds

    runs: dict[str, list[tuple[float, float, float]]] = {"warm": [], "cold": []}
    retry(False)  # warm-up, both ways
    retry(True)
    for _ in range(REPEATS):
        for name in runs:
            runs[name].append(retry(name == "cold"))
    best = {name: min(r[0] for r in rs) for name, rs in runs.items()}
    prompt = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    prompt_ms = {name: min(r[2] for r in rs) * 1000 for name, rs in runs.items()}
    return Retry(context_tokens=len(session.ids) - RETRY_TOKENS, new_tokens=RETRY_TOKENS, warm_s=best["warm"],
                 cold_s=best["cold"], cold_over_warm=best["cold"] / best["warm"], warm_prompt_tokens=prompt["warm"],
                 warm_prompt_ms=prompt_ms["warm"], cold_prompt_tokens=prompt["cold"], cold_prompt_ms=prompt_ms["cold"],
                 warm_times_s=[r[0] for r in runs["warm"]], cold_times_s=[r[0] for r in runs["cold"]])


def measure(bench: Bench) -> Remote | Skipped:
    files = server_files()
    if isinstance(files, str):
        return Skipped(f"no llama-server, so the remote rows are missing: {files}")
    threads = bench.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="korepl-bench-llama-") as folder:
        server = Server(files, threads, Path(folder) / "server.log")
        try:
            server.wait_healthy()
            loaded = backend.load_remote(str(DEMO_MODEL_DIR), server.url)  # the demo tokenizer, its weights served
            overhead = measure_overhead(loaded, server, bench.plan.remote_tokens)
            retry = measure_retry(loaded, server)
        finally:
            server.stop()
    return Remote(server=f"llama-server {loaded.remote.engine.version} ({os.path.basename(files['gguf'])})",
                  threads=threads, overhead=overhead, retry=retry)


def rows(result: Remote) -> list[Row]:
    o, r = result.overhead, result.retry
    where = f"{result.server}, -t {result.threads}"
    return [
        Row(f"remote: korepl over llama-server, {o.new_tokens} greedy tokens, request to last token ({where})",
            f"{o.korepl_s * 1000 / o.new_tokens:.2f} ms/token; {o.korepl_over_server:.2f}× the server's own stream; "
            f"after the first token {o.korepl_step_s * 1000:.2f} vs {o.server_step_s * 1000:.2f} ms/token "
            f"({o.korepl_step_over_server:.2f}×); same ids: {o.same_ids}",
            f"server's /completion stream, bare client: {o.server_s * 1000 / o.new_tokens:.2f} ms/token"),
        Row(f"remote: /retry after {r.context_tokens} tokens of context, {r.new_tokens} new (call to last token)",
            f"warm (prefix cache) {r.warm_s * 1000:.1f} ms, the server ran {r.warm_prompt_tokens:g} prompt tokens "
            f"in {r.warm_prompt_ms:.1f} ms",
            f"cold (slot held another text) {r.cold_s * 1000:.1f} ms, {r.cold_prompt_tokens:g} prompt tokens in "
            f"{r.cold_prompt_ms:.1f} ms: {r.cold_over_warm:.1f}× warm"),
    ]


SECTION = Section("remote", measure, rows)
