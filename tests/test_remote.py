"""korepl.remote against a real llama.cpp server running the demo model (converted to GGUF f32),
and its error handling against small stdlib HTTP servers that misbehave on purpose.

The llama-server binary and the GGUF come from scripts/llama_server.py (built once, then cached under
${KOREPL_CI_CACHE:-~/.cache/korepl-ci}).  These tests skip only where nothing is cached and nothing
can be built (no cmake or compiler); with CI set they fail instead.
"""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import threading
import time

import pytest
import torch

from korepl import remote, sampling
from korepl.remote import Engine, Remote, RemoteError, probe

from conftest import LlamaServer, free_port  # noqa: E402

PROMPT = "수강신청에서 원하는 강의를 신청하기 위해서는"


# The real llama.cpp server (fixtures `llama_files`, `llama`; LlamaServer, free_port) is in conftest.py.


def local_greedy(new_session, demo, prompt: str, count: int, penalty: float) -> tuple[list[int], list[int]]:
    """(the prompt's ids as korepl feeds them, korepl's own greedy continuation of them)."""
    session = new_session(demo, greedy=True, repetition_penalty=penalty, max_new_tokens=count, stop=(),
                          no_repeat_ngram_size=0, min_new_tokens=0, ban=())
    session.feed(prompt)
    prompt_ids = list(session.ids)
    for _ in session.generate():
        pass
    return prompt_ids, session.ids[len(prompt_ids):]


def test_probe_finds_llama_cpp(llama):
    found = probe(llama.url + "/v1/")  # with or without /v1
    assert found.engine.name == "llama.cpp"
    assert found.engine.api == "llama.cpp"
    assert found.engine.base_url == llama.url
    assert found.engine.context_length == 1024
    assert found.engine.token_prompts and found.engine.returns_ids and found.engine.logprobs
    assert {"top_k", "min_p", "repetition_penalty"} <= found.engine.extra_sampling
    assert found.engine.cannot() is None
    assert probe(llama.url).engine == found.engine


@pytest.mark.parametrize("penalty", [1.0, 2.0])
def test_greedy_ids_equal_korepl_local_greedy(llama, demo, new_session, penalty):
    prompt_ids, expected = local_greedy(new_session, demo, PROMPT, 30, penalty)
    assert len(expected) == 30
    got = [t.id for t in probe(llama.url).stream(prompt_ids, max_tokens=30, temperature=0.0, top_k=1,
                                                   repetition_penalty=penalty)]
    assert got == expected, (demo.tokenizer.decode(got), demo.tokenizer.decode(expected))


def test_n_probs_gives_the_top_n_of_the_local_softmax(llama, demo, new_session):
    session = new_session(demo, greedy=True, repetition_penalty=1.0, stop=())
    session.feed(PROMPT)
    probs = torch.softmax(session.next_logits().float(), dim=-1)
    local = torch.topk(probs, 5)
    tokens = list(probe(llama.url).stream(session.ids, max_tokens=4, temperature=0.0, n_probs=5))
    assert len(tokens) == 4
    for token in tokens:
        assert len(token.top) == 5
        assert token.top[0][0] == token.id  # greedy picks the likeliest
        values = [p for _, p in token.top]
        assert values == sorted(values, reverse=True) and 0 < sum(values) <= 1 + 1e-5
    first = tokens[0].top
    assert [i for i, _ in first] == local.indices.tolist()
    assert [p for _, p in first] == pytest.approx(local.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("temperature, top_k, top_p, min_p", [(0.7, 8, 0.9, 0.0), (1.5, 20, 0.8, 0.0),
                                                             (1.3, 4096, 1.0, 0.1)])
def test_the_sampling_set_equals_korepl_local(llama, demo, new_session, temperature, top_k, top_p, min_p):
    """Post-sampling probabilities: HF's order (temperature before top-k/top-p/min-p), as korepl samples."""
    session = new_session(demo, greedy=False, sampler="softmax", temperature=temperature, top_k=top_k, top_p=top_p,
                          min_p=min_p, repetition_penalty=1.0, stop=())
    session.feed(PROMPT)
    local = sampling.sampling_set(session.next_logits().float() / temperature, session.settings)
    assert 1 < len(local.ids) <= 40
    first = next(iter(probe(llama.url).stream(session.ids, max_tokens=1, temperature=temperature, top_k=top_k,
                                              top_p=top_p, min_p=min_p, seed=7, n_probs=40)))
    assert [i for i, _ in first.top] == local.ids.tolist()
    assert [p for _, p in first.top] == pytest.approx(local.chances.tolist(), abs=1e-4)


def test_ignore_eos_bans_the_end_of_text_token(llama, demo, new_session):
    session = new_session(demo, repetition_penalty=1.0, stop=())
    session.feed(PROMPT)
    server = probe(llama.url)
    eos = demo.tokenizer.eos_token_id

    def candidates(**extra):
        token = next(iter(server.stream(session.ids, max_tokens=1, temperature=1.3, top_k=4096, min_p=0.1,
                                        seed=7, n_probs=40, **extra)))
        return [i for i, _ in token.top]

    assert eos in candidates()  # this prompt's sampling set holds </s> (see the test above)
    assert eos not in candidates(ignore_eos=True)


def test_sampling_with_a_seed_repeats_and_keeps_to_top_k(llama, demo, new_session):
    prompt_ids, _ = local_greedy(new_session, demo, PROMPT, 1, 1.0)
    server = probe(llama.url)

    def run():
        return list(server.stream(prompt_ids, max_tokens=12, temperature=1.0, top_k=5, seed=1234, n_probs=5))

    first, second = run(), run()
    assert [t.id for t in first] == [t.id for t in second]
    for token in first:  # after the chain: at most top_k candidates, the pick among them
        assert 0 < len(token.top) <= 5 and token.id in [i for i, _ in token.top]


def test_stop_ids_end_the_stream(llama, demo, new_session):
    prompt_ids, expected = local_greedy(new_session, demo, PROMPT, 30, 1.0)
    stop = expected[5]
    got = [t.id for t in probe(llama.url).stream(prompt_ids, max_tokens=30, temperature=0.0, stop=[stop])]
    assert got == expected[:expected.index(stop) + 1]


def test_closing_the_stream_early_closes_the_connection(llama, demo, new_session):
    prompt_ids, expected = local_greedy(new_session, demo, PROMPT, 3, 1.0)
    server = probe(llama.url)
    # n_probs makes every event large, so an unread stream would stall the server on a full socket
    stream = server.stream(prompt_ids, max_tokens=900, temperature=0.0, n_probs=200, ignore_eos=True)
    assert next(stream).id == expected[0]
    stream.close()
    deadline = time.monotonic() + 15
    while any(slot.get("is_processing") for slot in llama.get("/slots")):
        assert time.monotonic() < deadline, "the server kept generating for a closed stream"
        time.sleep(0.1)
    again = [t.id for t in server.stream(prompt_ids, max_tokens=3, temperature=0.0)]
    assert again == expected


def test_a_server_killed_mid_stream_gives_remote_error(llama_files, tmp_path, demo, new_session):
    server = LlamaServer(llama_files, tmp_path / "doomed.log", context=2048)
    try:
        prompt_ids, _ = local_greedy(new_session, demo, PROMPT, 1, 1.0)
        remote_ = probe(server.url, read_timeout=20)
        stream = remote_.stream(prompt_ids, max_tokens=2000, temperature=0.0, n_probs=200, ignore_eos=True)
        next(stream)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        started = time.monotonic()
        with pytest.raises(RemoteError) as caught:
            for _ in stream:
                pass
        assert time.monotonic() - started < 20
        assert server.url in str(caught.value)
        assert "\n" not in str(caught.value)
    finally:
        server.stop()


# --- errors, without llama.cpp ----------------------------------------------------------------------

def test_connection_refused_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteError, match="connection refused") as caught:
        probe(url)
    assert url in str(caught.value)
    dead = Remote(Engine(url, "llama.cpp", api="llama.cpp"))
    with pytest.raises(RemoteError, match="connection refused"):
        next(dead.stream([1, 2, 3], max_tokens=4, temperature=0.0))


def test_unknown_host_says_so():
    with pytest.raises(RemoteError, match="unknown host"):
        probe("http://no-such-host.invalid:8080")


def test_not_a_server_address():
    with pytest.raises(RemoteError, match="not a server address"):
        probe("ftp://example.org")


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers every request as `self.server.script(handler)` says; records the Authorization header."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.server.script(self)

    do_POST = do_GET

    def send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    """scripted(script) -> base URL of a local HTTP server answering with script(handler)."""
    servers = []

    def start(script):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        server.script, server.seen = script, []
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # clients that hang up on purpose
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


LLAMA_ENGINE = dict(name="llama.cpp", api="llama.cpp")


@pytest.mark.parametrize("status, words", [(401, "API key"), (403, "API key"), (404, "check the base URL"),
                                           (429, "try again"), (500, "server's log"), (503, "server's log")])
def test_http_errors_are_one_line_and_never_show_the_key(scripted, monkeypatch, status, words):
    key = "sk-secret-123456"
    monkeypatch.setenv("KOREPL_API_KEY", key)
    url, server = scripted(lambda h: h.send(status, json.dumps({"error": {"message": f"no {key} here"}}).encode()))
    stream = Remote(Engine(url, **LLAMA_ENGINE), key=remote.api_key()).stream([1, 2], max_tokens=3)
    with pytest.raises(RemoteError, match=words) as caught:
        next(stream)
    message = str(caught.value)
    assert key not in message and "\n" not in message and url in message and str(status) in message
    assert server.seen[-1] == ("/completion", f"Bearer {key}")


def event_stream(handler, events: list[bytes], cut: bool = False) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for event in events:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        handler.wfile.flush()
    if cut:
        handler.wfile.write(b"40\r\ndata: {\"tok")  # half a chunk, then the connection goes
        handler.wfile.flush()
        handler.close_connection = True
        return
    handler.wfile.write(b"0\r\n\r\n")


def test_malformed_json_event(scripted):
    url, _ = scripted(lambda h: event_stream(h, [b'data: {"tokens": [5], "stop": false}\n\n', b"data: {oops\n\n"]))
    stream = Remote(Engine(url, **LLAMA_ENGINE)).stream([1], max_tokens=5)
    assert next(stream).id == 5
    with pytest.raises(RemoteError, match="not JSON"):
        next(stream)


def test_a_cut_stream(scripted):
    url, _ = scripted(lambda h: event_stream(h, [b'data: {"tokens": [5], "stop": false}\n\n'], cut=True))
    with pytest.raises(RemoteError, match="mid-answer|ended before") as caught:
        list(Remote(Engine(url, **LLAMA_ENGINE)).stream([1], max_tokens=5))
    assert url in str(caught.value)


def test_a_stream_that_ends_early(scripted):
    url, _ = scripted(lambda h: event_stream(h, [b'data: {"tokens": [5], "stop": false}\n\n']))
    with pytest.raises(RemoteError, match="ended before"):
        list(Remote(Engine(url, **LLAMA_ENGINE)).stream([1], max_tokens=5))


def test_a_silent_server_times_out(scripted):
    url, _ = scripted(lambda h: time.sleep(3))
    with pytest.raises(RemoteError, match="no answer in"):
        next(Remote(Engine(url, **LLAMA_ENGINE), read_timeout=0.5).stream([1], max_tokens=5))


def test_openai_shape_with_token_ids(scripted):
    """vLLM's streamed /v1/completions with return_token_ids and return_tokens_as_token_ids."""
    chunks = [{"choices": [{"text": "x", "token_ids": [7], "finish_reason": None,
                            "logprobs": {"top_logprobs": [{"token_id:7": -0.1, "token_id:9": -2.5}]}}]},
              {"choices": [{"text": "y", "token_ids": [8, 9], "finish_reason": "length",
                            "logprobs": {"top_logprobs": [{"token_id:8": -0.2}, {"token_id:9": -0.3}]}}]}]
    events = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
    bodies = []

    def answer(handler):
        bodies.append(json.loads(handler.rfile.read(int(handler.headers["Content-Length"]))))
        event_stream(handler, events)

    url, _ = scripted(answer)
    engine = Engine(url, "vllm", model="demo")
    tokens = list(Remote(engine).stream([1, 2], max_tokens=3, temperature=0.0, top_k=1, n_probs=2))
    assert [t.id for t in tokens] == [7, 8, 9]
    assert tokens[0].top[1][0] == 9 and tokens[0].top[1][1] == pytest.approx(0.0820849986)
    body = bodies[0]
    assert body["prompt"] == [1, 2] and body["model"] == "demo" and body["return_token_ids"] is True
    assert body["logprobs"] == 2 and body["return_tokens_as_token_ids"] is True and body["top_k"] == 1


def test_openai_shape_without_token_ids_says_so(scripted):
    events = [b'data: {"choices": [{"text": "x", "finish_reason": null}]}\n\n']
    url, _ = scripted(lambda h: event_stream(h, events))
    with pytest.raises(RemoteError, match="without token ids"):
        list(Remote(Engine(url, "openai-compatible", returns_ids=None)).stream([1], max_tokens=2))


def test_probe_tells_vllm_and_ollama_apart(scripted):
    def vllm(handler):
        if handler.path == "/version":
            handler.send(200, b'{"version": "0.11.0"}')
        elif handler.path == "/v1/models":
            handler.send(200, b'{"data": [{"id": "kogpt2", "max_model_len": 1024}]}')
        else:
            handler.send(404, b'{"detail": "Not Found"}')

    def ollama(handler):
        if handler.path == "/api/version":
            handler.send(200, b'{"version": "0.12.0"}')
        else:
            handler.send(404, b"404 page not found", "text/plain")

    url, _ = scripted(vllm)
    found = probe(url + "/v1").engine
    assert (found.name, found.model, found.context_length, found.api) == ("vllm", "kogpt2", 1024, "openai")
    url, _ = scripted(ollama)
    found = probe(url).engine
    assert found.name == "ollama" and not found.token_prompts
    with pytest.raises(RemoteError, match="no token-id prompts"):
        Remote(found).stream([1], max_tokens=2)


def test_an_untrusted_tls_certificate_is_refused(scripted, tmp_path, monkeypatch):
    """TLS is verified: a self-signed server is refused with a message that says how to trust it."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    url, server = scripted(lambda h: h.send(200, b'{"version": "0.11.0"}'))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    https = url.replace("http://", "https://")
    with pytest.raises(RemoteError, match="not trusted.*SSL_CERT_FILE") as caught:
        probe(https)
    assert https in str(caught.value)
    assert probe(https, insecure=True).engine.version == "0.11.0"  # korepl's --insecure: not checked at all
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the message advises: now it is trusted
    assert probe(https).engine.version == "0.11.0"


@pytest.mark.parametrize("address", ["[", "http://[::1", "localhost:abc", "localhost:99999", "ftp://host", "http://u:p@[x"])
def test_an_address_that_is_not_one_gets_one_line_without_the_password(address):
    with pytest.raises(remote.RemoteError) as caught:
        remote.normalize(address)
    assert "not a server address" in str(caught.value) and "u:p" not in str(caught.value)
