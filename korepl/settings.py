"""Decoding settings: one frozen dataclass, one table of fields that parses and validates them.

The table (FIELDS) is the single source for each setting's range, its help line and its config key;
the CLI flags and the REPL commands are built from it.  Layering: config/default.toml, then the
user's file, then flags.  Every change goes through `Settings.with_value`, which either returns a
new Settings or raises SettingError naming the setting and what it allows: the old value stays.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from korepl.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries the defaults inside the package; a source checkout has them in config/.
DEFAULTS_CANDIDATES = (PACKAGE_DIR / "_config" / "default.toml", PACKAGE_DIR.parent / "config" / "default.toml")

SAMPLERS = ("softmax", "uniform")
JOINS = ("newline", "space", "none")
MODES = ("write", "chat")


class SettingError(UserError):
    """A value that a setting does not allow; the message is meant for the user as it is."""


@dataclass(frozen=True)
class Settings:
    """How to decode.  The defaults live in config/default.toml (see `load_defaults`), nowhere else."""

    greedy: bool
    sampler: str
    top_k: int
    top_p: float
    temperature: float
    repetition_penalty: float
    max_new_tokens: int
    seed: int | None
    stop: tuple[str, ...]
    window_keep: float
    join: str
    no_repeat_ngram_size: int
    repetition_window: int | None
    ban: tuple[str, ...]
    min_new_tokens: int
    newline: str
    window_warn: float
    probs: bool
    mode: str
    min_p: float
    stop_keep: tuple[str, ...]
    memory: str
    threads: int

    def with_value(self, name: str, raw: Any) -> Settings:
        field = FIELDS_BY_NAME.get(name)
        if field is None:
            raise SettingError(f"unknown setting '{name}'; settings are: {', '.join(FIELDS_BY_NAME)}")
        return dataclasses.replace(self, **{name: field.parse(raw)})

    def with_values(self, values: Mapping[str, Any]) -> Settings:
        settings = self
        for name, raw in values.items():
            settings = settings.with_value(name, raw)
        return settings

    def describe(self) -> list[tuple[str, str]]:
        """(name, shown value) for each setting, in table order."""
        return [(f.name, f.show(getattr(self, f.name))) for f in FIELDS]


# --- parsers: each takes a string (flag, command) or a TOML value and returns the typed value ----


def _shown(raw: Any) -> str:
    """A value as an error message quotes it: short, whatever was given (a 5,000-digit number included)."""
    try:
        text = raw if isinstance(raw, str) else repr(raw)
    except ValueError:  # an int too long for str()
        return "a number of thousands of digits"
    text = text[:40] + "…" if len(text) > 40 else text
    return repr(text) if isinstance(raw, str) else text


def _int_in(low: int, high: int) -> Callable[[str, Any], int]:
    def parse(name: str, raw: Any) -> int:
        allowed = f"{name} must be a whole number from {low} to {high}"
        if isinstance(raw, bool):
            raise SettingError(f"{allowed} (got {_shown(raw)})")
        try:
            value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
        except ValueError:
            raise SettingError(f"{allowed} (got {_shown(raw)})") from None
        if not low <= value <= high:
            raise SettingError(f"{allowed} (got {_shown(value)})")
        return value

    return parse


def _float_in(low: float, high: float, *, low_open: bool, hint: str = "") -> Callable[[str, Any], float]:
    def parse(name: str, raw: Any) -> float:
        opening = f"greater than {low:g}" if low_open else f"at least {low:g}"
        allowed = f"{name} must be a number {opening} and at most {high:g}{hint}"
        if isinstance(raw, bool):
            raise SettingError(f"{allowed} (got {_shown(raw)})")
        try:
            value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip())
        except ValueError:
            raise SettingError(f"{allowed} (got {_shown(raw)})") from None
        # `not (...)` also rejects NaN, which compares false to everything.
        if not (value > low if low_open else value >= low) or not value <= high:
            raise SettingError(f"{allowed} (got {value:g})")
        return value

    return parse


def _bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise SettingError(f"{name} must be on or off (got {_shown(raw)})")


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in options:
            raise SettingError(f"{name} must be one of {', '.join(options)} (got {_shown(raw)})")
        return text

    return parse


def _int_or_none(low: int, high: int, none_word: str) -> Callable[[str, Any], int | None]:
    """A whole number in range, or `none_word` (meaning: no number; stored as None)."""

    def parse(name: str, raw: Any) -> int | None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() == none_word):
            return None
        try:
            return _int_in(low, high)(name, raw)
        except SettingError:
            raise SettingError(f"{name} must be a whole number from {low} to {high}, or {none_word} "
                               f"(got {_shown(raw)})") from None

    return parse


def _newline(name: str, raw: Any) -> str:
    text = str(raw).strip()
    if text in ("auto", "space") or (text.startswith("<") and text.endswith(">") and " " not in text):
        return text
    raise SettingError(f"{name} must be auto, space or a token such as <unused0> (got {_shown(raw)})")


MAX_MEMORY_CHARS = 20_000  # far more than half of any window this project runs; the session checks tokens


def _text(name: str, raw: Any) -> str:
    """Any text, "" meaning none (memory)."""
    if not isinstance(raw, str):
        raise SettingError(f"{name} must be a text (got {_shown(raw)})")
    if len(raw) > MAX_MEMORY_CHARS:
        raise SettingError(f"{name} must be at most {MAX_MEMORY_CHARS} characters (got {len(raw)})")
    return raw


def _text_list(name: str, raw: Any) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise SettingError(f"{name} must be a list of texts (got {_shown(raw)})")
    if any(s == "" for s in items):
        raise SettingError(f"{name} entries must not be empty")
    return tuple(dict.fromkeys(items))  # keep order, drop repeats


@dataclass(frozen=True)
class Field:
    name: str  # attribute, config key under [decoding], flag (--top-k) and /set name
    parse_value: Callable[[str, Any], Any]
    help: str
    metavar: str = ""
    command: str = ""  # the REPL's short command for it (/topk), if any
    ollama: str = ""  # its name in Ollama's `/set parameter NAME VALUE`, if any
    none_label: str = "off"  # how a value of None is shown

    @property
    def is_switch(self) -> bool:
        """On or off: given as --name / --no-name."""
        return self.parse_value is _bool

    @property
    def is_list(self) -> bool:
        """A list of texts, changed with add|del|list and given as a repeatable flag."""
        return self.parse_value is _text_list

    def parse(self, raw: Any) -> Any:
        return self.parse_value(self.name, raw)

    def show(self, value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if value is None:
            return self.none_label
        if isinstance(value, tuple):
            return ", ".join(value) if value else "(none)"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


TOP_K_MAX = 100_000

FIELDS: tuple[Field, ...] = (
    Field("greedy", _bool, "always take the likeliest token (on) or sample (off)", "on|off", command="greedy"),
    Field("sampler", _choice(SAMPLERS), "pick among the candidates by probability (softmax) or evenly (uniform)",
          "softmax|uniform", command="sample"),
    Field("top_k", _int_in(1, TOP_K_MAX), "sample among the k likeliest tokens", "K", command="topk", ollama="top_k"),
    Field("top_p", _float_in(0.0, 1.0, low_open=True), "sample among the likeliest tokens that make up p (1 = off)",
          "P", command="topp", ollama="top_p"),
    Field("temperature", _float_in(0.0, 10.0, low_open=True, hint="; for no randomness use greedy"),
          "below 1 sharpens, above 1 flattens the distribution", "T", command="temp", ollama="temperature"),
    Field("repetition_penalty", _float_in(0.0, 10.0, low_open=True),
          "divide the scores of tokens already in the window (1 = off)", "R", command="rep", ollama="repeat_penalty"),
    Field("max_new_tokens", _int_in(1, 4096), "longest continuation, in tokens", "N", command="max",
          ollama="num_predict"),
    Field("seed", _int_or_none(0, 2**63 - 1, "off"), "a whole number makes sampling reproducible; off draws a fresh one",
          "N|off", command="seed", ollama="seed"),
    Field("stop", _text_list, "stop at any of these: a token such as </s>, or any text (not shown)", "TEXT",
          command="stop"),
    Field("stop_keep", _text_list, "stop right after writing any of these texts, and keep it (a sentence end: 다.)",
          "TEXT"),
    Field("no_repeat_ngram_size", _int_in(0, 20), "never repeat a run of this many tokens (0 = off)", "N",
          command="norepeat"),
    Field("repetition_window", _int_or_none(1, TOP_K_MAX, "all"),
          "penalise repeats among only the last N tokens (all = the whole window)", "N|all", command="repwindow",
          none_label="all"),
    Field("ban", _text_list, "words or phrases the model may not write", "TEXT", command="ban"),
    Field("min_new_tokens", _int_in(0, 4096), "write at least this many tokens before a stop token counts", "N",
          command="min"),
    Field("newline", _newline, "what the model is given for a newline: auto, space, or a token such as <unused0>",
          "auto|space|TOKEN", command="newline"),
    Field("window_keep", _float_in(0.1, 0.95, low_open=False),
          "when the model's window is full, keep this fraction of it", "F"),
    Field("join", _choice(JOINS), "what goes between the text so far and a typed line (none if it ends in a space)",
          "newline|space|none"),
    Field("window_warn", _float_in(0.5, 1.0, low_open=False), "warn in the toolbar when this share of the window is used",
          "F"),
    Field("probs", _bool, "colour each generated token by its probability, so unsure ones stand out", "on|off",
          command="probs"),
    Field("min_p", _float_in(0.0, 1.0, low_open=False),
          "drop tokens less likely than this share of the likeliest one's probability (0 = off)", "P",
          command="minp", ollama="min_p"),
    Field("memory", _text, "a text the model always sees first, however long the writing grows", "TEXT"),
    Field("threads", _int_in(0, 1024), "CPU threads the model runs on (0 = torch's default for this machine)", "N",
          command="threads", ollama="num_thread"),
    Field("mode", _choice(MODES), "write: plain continuation; chat: each line as <usr> line <sys>, answers end at </s>",
          "write|chat", command="mode"),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
assert set(FIELDS_BY_NAME) == {f.name for f in dataclasses.fields(Settings)}, "FIELDS must cover Settings"


# --- files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything a config file can say: what to load, and how to decode."""

    model: str
    device: str
    dtype: str
    quantize: str
    compile: str  # auto, on or off: see COMPILE
    decoding: Settings
    keep_sessions: int  # how many REPL sessions the state folder keeps (the latest with text always stays)
    # The decoding settings the user chose (in their file or by flags), which win over a resumed session's.
    chosen: frozenset[str] = frozenset()
    backend: str = ""  # a serving engine's URL that runs the model ("" = run it in this process)
    api_key_command: str = ""  # a command that prints the serving engine's API key ("" = from the environment)
    insecure: bool = False  # --insecure only (never from a file): the server's TLS certificate is not checked


DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16", "auto")
QUANTIZE = ("none", "int8")
COMPILE = ("auto", "on", "off")  # the one-token step compiled in the background (korepl/compiled.py)
LOAD_KEYS = {"device": DEVICES, "dtype": DTYPES, "quantize": QUANTIZE, "compile": COMPILE}  # how to run the model
TEXT_KEYS = ("backend", "api_key_command")  # where the model runs: free text, "" = not used


class ConfigError(UserError):
    """A config file that cannot be used; the message names the file, and the line or key."""


MAX_CONFIG_BYTES = 1 << 20


def defaults_path() -> Path:
    for path in DEFAULTS_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"korepl's default settings are missing (looked in {', '.join(map(str, DEFAULTS_CANDIDATES))})")


def read_config(path: Path, base: Config | None, notes: list[str] | None = None) -> Config:
    """`base` with what the TOML file at `path` sets (no base: the file must set everything).

    ConfigError names the file and the line or key at fault.  A file that is not UTF-8 is read as
    CP949 (or with U+FFFD), and `notes` gets one line saying so.
    """
    from korepl import textin

    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a settings file is a few lines")
    decoded = textin.decode_bytes(raw, "the file")
    try:
        data = tomllib.loads(decoded.text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a number of thousands of digits, nesting thousands deep
        raise ConfigError(f"{path}: a value korepl cannot read ({str(exc)[:80]})") from None
    if decoded.note and notes is not None:
        notes.append(f"korepl: {path}: {decoded.note}")
    return apply_config(data, base, str(path))


def apply_config(data: Mapping[str, Any], base: Config | None, source: str) -> Config:
    unknown = set(data) - {"model", "decoding", "keep_sessions", *LOAD_KEYS, *TEXT_KEYS}
    if unknown:
        raise ConfigError(f"{source}: unknown key '{sorted(unknown)[0]}' "
                          f"(keys are model, {', '.join(LOAD_KEYS)}, {', '.join(TEXT_KEYS)}, keep_sessions "
                          "and [decoding])")
    decoding = data.get("decoding", {})
    if not isinstance(decoding, Mapping):
        raise ConfigError(f"{source}: [decoding] must be a table")
    if base is None:
        missing = [n for n in ("model", "keep_sessions", *LOAD_KEYS) if n not in data] + \
            [n for n in FIELDS_BY_NAME if n not in decoding]
        if missing:
            raise ConfigError(f"{source}: key '{missing[0]}' is missing")
    model = data.get("model", base and base.model)
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{source}: key 'model' must be a hub id or a folder path")
    load = {}
    for key, allowed in LOAD_KEYS.items():
        load[key] = data.get(key, base and getattr(base, key))
        if load[key] not in allowed:
            raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(allowed)} (got {load[key]!r})")
    for key in TEXT_KEYS:
        load[key] = data.get(key, base.__dict__[key] if base is not None else "")
        if not isinstance(load[key], str) or "\n" in load[key]:
            raise ConfigError(f"{source}: key '{key}' must be a text on one line (\"\" = none)")
        load[key] = load[key].strip()
    try:
        keep_sessions = parse_keep_sessions(data.get("keep_sessions", base and base.keep_sessions))
    except SettingError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        if base is None:
            settings = Settings(**{name: field.parse(decoding[name]) for name, field in FIELDS_BY_NAME.items()})
        else:
            settings = base.decoding.with_values(decoding)
    except SettingError as exc:
        raise ConfigError(f"{source}: [decoding] {exc}") from None
    chosen = frozenset(decoding) | base.chosen if base is not None else frozenset()
    return Config(model=model, decoding=settings, keep_sessions=keep_sessions, chosen=chosen, **load)


def parse_keep_sessions(raw: Any) -> int:
    return _int_in(1, 100_000)("keep_sessions", raw)


def load_defaults() -> Config:
    return read_config(defaults_path(), None)
