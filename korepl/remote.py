"""A serving engine over HTTP as a source of token ids: llama.cpp's llama-server, vLLM, SGLang, Ollama.

korepl sends the context as token ids and takes token ids back, decoding them with its own tokenizer,
so the engine's detokenizer never matters.  Two wire shapes:

- llama.cpp's native `POST /completion` with `"prompt": [ids]`, `"return_tokens": true` (and
  `n_probs`, `post_sampling_probs` for the top-N), streamed as server-sent events;
- the OpenAI `POST /v1/completions` shape, for engines that put token ids in it (vLLM's
  `return_token_ids`, `return_tokens_as_token_ids` for the top-N logprobs).

    remote = probe("http://127.0.0.1:8080")        # what the engine is and what it can do
    for token in remote.stream(ids, max_tokens=30, temperature=0):
        token.id, token.top                         # top: ((id, probability), ...) when n_probs > 0

Dependency-free (http.client).  Every failure is one `RemoteError` whose message is one line naming
the server and what to do.  The API key comes from KOREPL_API_KEY or OPENAI_API_KEY, is sent as a
Bearer header and never appears in a message.  TLS is verified.  Closing the generator (or Ctrl+C
inside it) closes the connection at once, and the engine stops generating.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import ssl
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from korepl.errors import UserError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # between two events; a long prompt on a big model takes a while to prefill
MAX_ERROR_TEXT = 160

# HF's order of the logits transforms (repetition penalty, temperature, top-k, top-p, min-p),
# which korepl's own decoding follows; llama.cpp's default order puts temperature last.
LLAMA_CPP_SAMPLERS = ["penalties", "temperature", "top_k", "top_p", "min_p"]


class RemoteError(UserError):
    """The serving engine could not be used; `str(exc)` is one line naming the server and what to do."""


@dataclass(frozen=True)
class Token:
    """One generated token id and, when asked for, the engine's top-N candidates as (id, probability)."""

    id: int
    top: tuple[tuple[int, float], ...] = ()
    probability: float | None = None  # the engine's probability of this token, when it says (with n_probs)


@dataclass(frozen=True)
class Engine:
    """What `probe` found: which engine answers at `base_url` and what it supports."""

    base_url: str  # without /v1
    name: str  # llama.cpp, vllm, sglang, ollama, openai-compatible
    model: str | None = None
    version: str | None = None
    context_length: int | None = None
    token_prompts: bool = True  # accepts the prompt as token ids
    returns_ids: bool | None = True  # gives token ids back (None: not known until a stream tries)
    logprobs: bool = True  # top-N candidates per token
    extra_sampling: frozenset[str] = frozenset({"top_k", "min_p", "repetition_penalty"})
    api: str = "openai"  # the wire shape stream() uses: "llama.cpp" or "openai"
    vocab_size: int | None = None  # the model's vocabulary, when the engine says it (llama.cpp's n_vocab)
    min_tokens: bool = False  # honours a minimum number of new tokens (vLLM's, SGLang's min_tokens)

    def cannot(self) -> str | None:
        """Why korepl cannot continue a text with this engine, or None."""
        if not self.token_prompts:
            return f"{self.name} takes no token-id prompts"
        if self.returns_ids is False:
            return f"{self.name} does not return token ids"
        return None


def api_key() -> str | None:
    return os.environ.get("KOREPL_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def normalize(base_url: str) -> str:
    """The engine's root: scheme and host required, a trailing slash and /v1 dropped."""
    url = base_url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- reading it checks it (ValueError for letters or out of range)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # '[' (a broken IPv6 address), a port of letters or out of range
        usable = False
    if not usable:
        raise RemoteError(f"not a server address: {shown(base_url)!r} (give one such as http://127.0.0.1:8080)")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def shown(url: str) -> str:
    """A URL fit for a message: without user:password@."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:  # not a URL at all: show none of it past a possible user:password@
        return url.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class _Http:
    """One request at a time to one server; errors become RemoteError."""

    def __init__(self, base_url: str, key: str | None, connect_timeout: float, read_timeout: float,
                 insecure: bool = False):
        self.base_url = base_url
        self.insecure = insecure
        self.key = key
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        parts = urllib.parse.urlsplit(base_url)
        self.scheme, self.host, self.port = parts.scheme, parts.hostname or "", parts.port
        self.prefix = parts.path.rstrip("/")

    def where(self, path: str) -> str:
        return shown(self.base_url + path)

    def scrub(self, text: str) -> str:
        text = " ".join(str(text).split())
        if self.key:
            text = text.replace(self.key, "***")
        return text[:MAX_ERROR_TEXT]

    def open(self, method: str, path: str, body: dict | None = None,
             accept: str = "application/json") -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; return the connection and a 2xx response (the caller closes the connection)."""
        if self.scheme == "https":
            context = ssl.create_default_context()
            if self.insecure:  # --insecure: the user asked for no certificate checks (and was warned)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=context)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        headers = {"Accept": accept, "User-Agent": "korepl"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            try:
                connection.connect()
                connection.sock.settimeout(self.read_timeout)
                connection.request(method, self.prefix + path, body=data, headers=headers)
                response = connection.getresponse()
            except BaseException as error:
                raise self.failure(error, path) from None
            if not 200 <= response.status < 300:
                raise self.refusal(response, path)
            return connection, response
        except BaseException:
            connection.close()
            raise

    def failure(self, error: BaseException, path: str) -> BaseException:
        """The RemoteError for a failure below HTTP (or the error itself when it is not one, e.g. Ctrl+C)."""
        where = self.where(path)
        if isinstance(error, RemoteError):
            return error
        if isinstance(error, ssl.SSLCertVerificationError):
            return RemoteError(f"{where}: its TLS certificate is not trusted ({self.scrub(error.verify_message)}); "
                               "fix the certificate, or point SSL_CERT_FILE at the CA that signed it")
        if isinstance(error, ssl.SSLError):
            return RemoteError(f"{where}: TLS failed ({self.scrub(error.reason or error)}); "
                               "check that the address should be https (or http)")
        if isinstance(error, socket.gaierror):
            return RemoteError(f"{where}: unknown host {self.host!r}; check the address")
        if isinstance(error, ConnectionRefusedError):
            return RemoteError(f"{where}: connection refused; is the server running and listening on this port?")
        if isinstance(error, (TimeoutError, socket.timeout)):
            return RemoteError(f"{where}: no answer in {self.read_timeout:g} s; the server may be busy or "
                               "still loading its model, try again")
        if isinstance(error, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
            return RemoteError(f"{where}: the server closed the connection mid-answer; see the server's log "
                               "and try again")
        if isinstance(error, (OSError, http.client.HTTPException)):
            return RemoteError(f"{where}: {type(error).__name__}: {self.scrub(error)}; check the address "
                               "and that the server is running")
        return error

    def refusal(self, response: http.client.HTTPResponse, path: str) -> RemoteError:
        status, where = response.status, self.where(path)
        try:
            said = server_message(response.read(4096))
        except (OSError, http.client.HTTPException):
            said = ""
        said = f": {self.scrub(said)}" if said else ""
        if status in (401, 403):
            what = ("the API key was refused; check KOREPL_API_KEY (or OPENAI_API_KEY)" if self.key else
                    "it asks for an API key; set KOREPL_API_KEY (or OPENAI_API_KEY)")
            return RemoteError(f"{where}: HTTP {status}{said}; {what}")
        if status == 404:
            return RemoteError(f"{where}: HTTP 404, no such endpoint{said}; check the base URL "
                               "(such as http://127.0.0.1:8080 or http://host:8000/v1) and that it is a serving engine")
        if status == 429:
            return RemoteError(f"{where}: HTTP 429, too many requests{said}; wait a moment and try again")
        if status >= 500:
            return RemoteError(f"{where}: HTTP {status}, the server failed{said}; see the server's log")
        return RemoteError(f"{where}: HTTP {status}, the request was refused{said}")

    def read_all(self, connection, response, path: str) -> bytes:
        """The whole body of a response that is not a stream; the connection is closed after it."""
        try:
            return response.read()
        except BaseException as error:
            raise self.failure(error, path) from None
        finally:
            connection.close()

    def get_json(self, path: str) -> dict | list | None:
        """GET a JSON document; None when the server has no such endpoint (404, 405 or not JSON)."""
        try:
            connection, response = self.open("GET", path)
        except RemoteError as error:
            if " HTTP 404" in str(error) or " HTTP 405" in str(error) or " HTTP 501" in str(error):
                return None
            raise
        raw = self.read_all(connection, response, path)
        try:
            return json.loads(raw)
        except ValueError:
            return None


def server_message(raw: bytes) -> str:
    """The error text an engine put in its JSON body (llama.cpp, vLLM and OpenAI differ), or the raw text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", "")))
        if isinstance(error, dict):
            error = error.get("message", "") or json.dumps(error)
        return str(error)
    return text


class Remote:
    """A probed engine: `stream` continues a list of token ids with token ids."""

    def __init__(self, engine: Engine, key: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT, insecure: bool = False):
        self.engine = engine
        self._http = _Http(engine.base_url, key, connect_timeout, read_timeout, insecure)
        self.last_timings: dict | None = None  # llama.cpp's figures for the last stream (cache_n, prompt_ms, ...)

    def __repr__(self) -> str:
        return f"Remote({self.engine!r})"  # never the key

    def stream(self, prompt_ids: Sequence[int], max_tokens: int, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stop: Sequence[int] = (), n_probs: int = 0, ignore_eos: bool = False,
               min_tokens: int = 0, ban_ids: Sequence[int] = (), streamed: bool = True,
               repetition_window: int | None = None) -> Iterator[Token]:
        """Yield the engine's continuation of `prompt_ids`, one Token at a time.

        temperature 0 is greedy.  top_k 0, top_p 1.0, min_p 0.0 and repetition_penalty 1.0 are off
        (Hugging Face's semantics; the penalty counts the prompt's ids too, or only the last
        `repetition_window` ids where llama.cpp is asked: its repeat_last_n).  `stop`: token ids that
        end the stream once yielded.  The engine's own end-of-text token (`</s>` for KoGPT2) is
        yielded and ends the stream too, unless `ignore_eos`, which the engines implement by banning
        it (it is then never picked, and missing from `top`).  `n_probs` > 0 fills each Token's
        `top` with that many (id, probability) pairs: after the sampling chain when sampling, a
        plain softmax when greedy (what korepl's own peek shows).

        `streamed` False: one answer, read whole.  llama.cpp holds a token whose text is an unfinished
        UTF-8 character back from its stream until the character is complete, and drops it when the
        stream ends there (at max_tokens): a stream can yield fewer tokens than it generated.  The
        answer read whole has them all.
        """
        reason = self.engine.cannot()
        if reason:
            raise RemoteError(f"{shown(self.engine.base_url)}: {reason}, so korepl cannot continue a text with it")
        if max_tokens <= 0:
            return iter(())
        unsupported = [name for name, value, off in (("top_k", top_k, 0), ("min_p", min_p, 0.0),
                                                     ("repetition_penalty", repetition_penalty, 1.0))
                       if value != off and name not in self.engine.extra_sampling]
        if min_tokens and not self.engine.min_tokens:
            unsupported.append("min_tokens")
        if repetition_window is not None and self.engine.api != "llama.cpp":
            unsupported.append("repetition window")
        if unsupported:
            raise RemoteError(f"{shown(self.engine.base_url)}: {self.engine.name} has no {', '.join(unsupported)}; "
                              "turn it off to use this server")
        ids = [int(i) for i in prompt_ids]
        if self.engine.api == "llama.cpp":
            path, body, read = "/completion", self._llama_cpp_body(ids, max_tokens, temperature, top_k, top_p, min_p,
                                                                   repetition_penalty, seed, n_probs), _llama_cpp_tokens
            body["ignore_eos"] = ignore_eos
            if repetition_window is not None:  # its ring buffer holds the prompt's ids and the new ones alike
                body["repeat_last_n"] = repetition_window
        else:
            path, body, read = "/v1/completions", self._openai_body(ids, max_tokens, temperature, top_k, top_p, min_p,
                                                                    repetition_penalty, seed, n_probs), _openai_tokens
            body["ignore_eos"] = ignore_eos
            if min_tokens:
                body["min_tokens"] = min_tokens
        if ban_ids:  # never written (korepl's suppressed special tokens): a bias of -inf, as the engines spell it
            body["logit_bias"] = ([[int(i), False] for i in ban_ids] if self.engine.api == "llama.cpp"
                                  else {str(int(i)): -100 for i in ban_ids})
        stops = frozenset(stop)
        if not streamed:
            body["stream"] = False
            return self._whole(path, body, read, stops, max_tokens)
        return self._events(path, body, read, stops, max_tokens)

    def _whole(self, path: str, body: dict, read, stops: frozenset[int], max_tokens: int) -> Iterator[Token]:
        http_ = self._http
        self.last_timings = None
        connection, response = http_.open("POST", path, body)
        raw = http_.read_all(connection, response, path)
        try:
            chunk = json.loads(raw)
        except ValueError:
            raise RemoteError(f"{http_.where(path)}: sent an answer that is not JSON; is this a serving engine?") from None
        if not isinstance(chunk, dict):
            raise RemoteError(f"{http_.where(path)}: sent an unexpected answer")
        if isinstance(chunk.get("timings"), dict):
            self.last_timings = chunk["timings"]
        tokens, _ = read(chunk, http_.where(path))
        for count, token in enumerate(tokens, 1):
            yield token
            if token.id in stops or count >= max_tokens:
                return

    def _llama_cpp_body(self, ids, max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, n_probs):
        body = {
            "prompt": ids, "n_predict": max_tokens, "stream": True, "return_tokens": True, "cache_prompt": True,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "repeat_penalty": repetition_penalty,
            "repeat_last_n": len(ids) + max_tokens,  # all of them, as HF counts (its ring buffer is this long)
            "samplers": LLAMA_CPP_SAMPLERS,
            "seed": -1 if seed is None else seed,
        }
        if n_probs > 0:
            # after the sampling chain, as korepl's own peek shows them (greedy: a plain softmax)
            body.update(n_probs=n_probs, post_sampling_probs=temperature > 0)
        return body

    def _openai_body(self, ids, max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, seed, n_probs):
        body = {
            "prompt": ids, "max_tokens": max_tokens, "stream": True, "temperature": temperature, "top_p": top_p,
            "return_token_ids": True, "skip_special_tokens": False,
        }
        if self.engine.model:
            body["model"] = self.engine.model
        if "top_k" in self.engine.extra_sampling:
            body.update(top_k=top_k if top_k > 0 else -1, min_p=min_p, repetition_penalty=repetition_penalty)
        if seed is not None:
            body["seed"] = seed
        if n_probs > 0:
            body.update(logprobs=n_probs, return_tokens_as_token_ids=True)
        return body

    def _events(self, path: str, body: dict, read, stops: frozenset[int], max_tokens: int) -> Iterator[Token]:
        http_ = self._http
        self.last_timings = None
        connection, response = http_.open("POST", path, body, accept="text/event-stream")
        count = 0
        try:
            for event in _sse(response, http_, path):
                if event == "[DONE]":
                    return
                try:
                    chunk = json.loads(event)
                except ValueError:
                    raise RemoteError(f"{http_.where(path)}: sent an event that is not JSON "
                                      f"({http_.scrub(event)!r}); is this a serving engine?") from None
                if not isinstance(chunk, dict):
                    raise RemoteError(f"{http_.where(path)}: sent an unexpected event ({http_.scrub(event)!r})")
                if "error" in chunk:
                    raise RemoteError(f"{http_.where(path)}: the server failed mid-answer: "
                                      f"{http_.scrub(server_message(event.encode()))}; see the server's log")
                if isinstance(chunk.get("timings"), dict):
                    self.last_timings = chunk["timings"]
                tokens, done = read(chunk, http_.where(path))
                for token in tokens:
                    yield token
                    count += 1
                    if token.id in stops or count >= max_tokens:
                        return
                if done:
                    return
            raise RemoteError(f"{http_.where(path)}: the stream ended before the answer did; see the server's log "
                              "and try again")
        finally:
            connection.close()  # at once, also on close() and Ctrl+C: the engine stops generating


def _sse(response: http.client.HTTPResponse, http_: _Http, path: str) -> Iterator[str]:
    """The data of each server-sent event (multi-line data joined); ends at the end of the stream."""
    data: list[str] = []
    while True:
        try:
            line = response.readline()
        except BaseException as error:
            raise http_.failure(error, path) from None
        if not line:
            if data:
                yield "\n".join(data)
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                yield "\n".join(data)
                data = []
        elif text.startswith("data:"):
            data.append(text[5:].lstrip(" "))
        elif text.startswith("error:"):  # llama.cpp writes some failures this way
            data.append(json.dumps({"error": text[6:].strip()}))


def _top(items, key_id, key_value, is_log: bool) -> tuple[tuple[int, float], ...]:
    out = []
    for item in items or ():
        value = float(item[key_value])
        out.append((int(item[key_id]), math.exp(value) if is_log else value))
    return tuple(out)


def _llama_cpp_tokens(chunk: dict, where: str) -> tuple[list[Token], bool]:
    ids = chunk.get("tokens") or []
    probs = chunk.get("completion_probabilities") or []
    tops: list[tuple[tuple[int, float], ...]] = []
    for entry in probs:
        if "top_probs" in entry:
            tops.append(_top(entry["top_probs"], "id", "prob", False))
        else:
            tops.append(_top(entry.get("top_logprobs"), "id", "logprob", True))
    if probs and len(probs) != len(ids):
        raise RemoteError(f"{where}: sent {len(ids)} token ids with {len(probs)} probability lists; "
                          "update the server")
    chosen = [entry.get("prob", math.exp(entry["logprob"]) if "logprob" in entry else None) for entry in probs]
    tokens = [Token(int(i), tops[n] if tops else (), chosen[n] if chosen else None) for n, i in enumerate(ids)]
    if not ids and chunk.get("content") and not chunk.get("stop"):
        raise RemoteError(f"{where}: sent text without token ids; it needs return_tokens (llama.cpp b4000 or later)")
    return tokens, bool(chunk.get("stop"))


def _openai_token_id(key: str) -> int:
    return int(key.split(":", 1)[1]) if key.startswith("token_id:") else int(key)


def _openai_tokens(chunk: dict, where: str) -> tuple[list[Token], bool]:
    choices = chunk.get("choices") or []
    if not choices:
        return [], False
    choice = choices[0]
    ids = choice.get("token_ids")
    if ids is None:
        if choice.get("text"):
            raise RemoteError(f"{where}: sent text without token ids; korepl needs an engine that returns them "
                              "(vLLM 0.10.2 or later, with return_token_ids)")
        ids = []
    tops: list[tuple[tuple[int, float], ...]] = []
    logprobs = choice.get("logprobs") or {}
    for entry in logprobs.get("top_logprobs") or []:
        try:
            tops.append(tuple((_openai_token_id(k), math.exp(float(v))) for k, v in (entry or {}).items()))
        except ValueError:
            raise RemoteError(f"{where}: its top logprobs name tokens by text, not id; it needs "
                              "return_tokens_as_token_ids") from None
    tokens = [Token(int(i), tops[n] if n < len(tops) else ()) for n, i in enumerate(ids)]
    return tokens, choice.get("finish_reason") is not None


def probe(base_url: str, key: str | None = None, timeout: float = CONNECT_TIMEOUT,
          read_timeout: float = READ_TIMEOUT, insecure: bool = False) -> Remote:
    """Find which engine answers at `base_url` (with or without /v1) and what it supports.

    `insecure`: TLS certificates are not checked (korepl's --insecure, which warns).
    """
    base = normalize(base_url)
    key = key if key is not None else api_key()
    http_ = _Http(base, key, timeout, timeout, insecure)
    engine = _identify(http_)
    return Remote(engine, key, timeout, read_timeout, insecure)


def _identify(http_: _Http) -> Engine:
    base = http_.base_url
    props = http_.get_json("/props")
    if isinstance(props, dict) and ("default_generation_settings" in props or "build_info" in props):
        settings = props.get("default_generation_settings") or {}
        n_ctx = settings.get("n_ctx") or (settings.get("params") or {}).get("n_ctx")
        models = _models(http_)
        model = _model_entry(models)[0] or os.path.basename(str(props.get("model_path", ""))) or None
        meta = (models or {}).get("data", [{}])[0].get("meta") if isinstance(models, dict) and models.get("data") \
            else None
        n_vocab = meta.get("n_vocab") if isinstance(meta, dict) else None
        return Engine(base, "llama.cpp", model=model, version=props.get("build_info"),
                      context_length=int(n_ctx) if n_ctx else None, api="llama.cpp",
                      vocab_size=int(n_vocab) if isinstance(n_vocab, int) else None)
    ollama = http_.get_json("/api/version")
    if isinstance(ollama, dict) and "version" in ollama:
        return Engine(base, "ollama", model=_first_model(http_), version=str(ollama["version"]),
                      token_prompts=False, returns_ids=False, logprobs=False, extra_sampling=frozenset())
    sglang = http_.get_json("/get_model_info")
    if isinstance(sglang, dict) and "model_path" in sglang:
        return Engine(base, "sglang", model=_first_model(http_) or sglang.get("model_path"), returns_ids=None,
                      min_tokens=True)
    vllm = http_.get_json("/version")
    if isinstance(vllm, dict) and "version" in vllm:
        models = http_.get_json("/v1/models")
        model, length = _model_entry(models)
        return Engine(base, "vllm", model=model, version=str(vllm["version"]), context_length=length,
                      min_tokens=True)
    models = http_.get_json("/v1/models")
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        model, length = _model_entry(models)
        return Engine(base, "openai-compatible", model=model, context_length=length, returns_ids=None,
                      extra_sampling=frozenset())
    raise RemoteError(f"{shown(base)}: answers, but not as llama.cpp, vLLM, SGLang, Ollama or an OpenAI-compatible "
                      "server (no /props, /version or /v1/models); check the address")


def _model_entry(models) -> tuple[str | None, int | None]:
    if isinstance(models, dict) and models.get("data"):
        entry = models["data"][0]
        length = entry.get("max_model_len")
        return entry.get("id"), int(length) if length else None
    return None, None


def _models(http_: _Http):
    try:
        return http_.get_json("/v1/models")
    except RemoteError:
        return None


def _first_model(http_: _Http) -> str | None:
    try:
        return _model_entry(http_.get_json("/v1/models"))[0]
    except RemoteError:
        return None


__all__ = ["Engine", "Remote", "RemoteError", "Token", "api_key", "normalize", "probe"]
