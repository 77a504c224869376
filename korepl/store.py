"""Session files: versioned JSON written atomically, checked whole before anything is restored.

A file holds the text, the token ids, the turn tree, the settings and which model and tokenizer wrote
it.  `write` goes through a temporary file, fsync and rename, so a crash mid-save leaves the previous
file as it was (and `remove_stale_temps` clears what a killed save left behind).  `read_file` +
`restore` refuse a corrupt, truncated, hostile or foreign file with one clear StoreError and leave
the session untouched: `read_file` reads only regular files of bounded size, and `restore` checks
every value's type and range, and that each turn's text is what its token ids say, before it changes
anything.

The REPL keeps one file per run in the sessions folder (`new_session_path`), so that no run can
overwrite a fuller session with an emptier one; `session_files`, `latest_with_text` and `prune`
list, find and tidy them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import time
import weakref
from pathlib import Path
from typing import Any

from korepl import paths, turns
from korepl.controls import resolve
from korepl.settings import FIELDS_BY_NAME, SettingError, Settings
from korepl.errors import UserError
from korepl.textin import CONTROL, ESCAPE_SEQUENCE, decode_bytes

FORMAT = "korepl-session"
VERSION = 1
# No session file korepl writes comes near this (a 20,000-token text with a long history is ~1 MB);
# a larger file is refused before it is read, so a wrong path cannot fill the memory.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Checking each turn's text against its ids reads, for each turn, what it added since an earlier turn
# whose state it still holds whole (about 0.15 s per million ids and characters on one core).  A real
# session's tree costs about its own size; a file built to make the check run for hours costs more
# than this, and is refused.
MAX_CHECK_SIZE = 20_000_000
# How far up the tree to look for that earlier turn before reading a turn's text whole.
ANCHOR_SEARCH = 64
# Characters either side of a cut within which a normaliser is taken to look (combining marks, jamo).
NORMALISER_REACH = 8
# A temporary file from a save whose process is gone, or older than this, is debris.
STALE_TEMP_SECONDS = 3600
# .NAME.PID.RANDOM.tmp, next to the file being saved.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<tag>[0-9a-f]+)\.tmp$")
# What earlier versions left (tempfile.mkstemp: .NAME.XXXXXXXX.tmp): removed once old.
OLD_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
# The REPL's own files in the sessions folder: local time, then the process id.
SESSION_NAME = re.compile(r"^(?P<time>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})-(?P<pid>\d+)\.json$")
SESSION_TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
FIRST_WORDS = 8


class StoreError(UserError):
    """A session file that cannot be used; the message says which file and why."""


def tokenizer_fingerprint(vocab) -> str:
    """A short hash of a Vocabulary's token table, computed once per vocabulary (sorting 51,200 takes ~80 ms)."""
    if getattr(vocab, "fingerprint", None) is None:
        table = sorted(vocab.vocab.items())
        vocab.fingerprint = hashlib.sha256(json.dumps(table, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return vocab.fingerprint


def model_fingerprint(model) -> dict[str, Any]:
    config = model.config
    keys = ("model_type", "vocab_size", "n_positions", "max_position_embeddings", "n_embd", "hidden_size",
            "n_layer", "num_hidden_layers", "n_head", "num_attention_heads")
    return {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}


def to_json(session) -> dict[str, Any]:
    settings = dataclasses.asdict(session.settings)
    return {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": session.loaded.name, "shape": model_fingerprint(session.model)},
        "tokenizer": tokenizer_fingerprint(session.vocab),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "text": session.text,
        "ids": session.ids,
        "view_start": session.view_start,
        "turns": turns.to_json(session.root, session.turn),
    }


# --- writing ------------------------------------------------------------------------------------


def write(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically: temporary file in the same folder, fsync, rename, fsync the folder.

    On any failure (a read-only folder, a full disk) the temporary file is removed, the previous
    file is left as it was, and the OSError propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compact: a list of ids on one line each (indent) made files 3x larger and saves slower.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_ESCAPE_DEL_AND_C1).encode("utf-8")
    write_bytes(path, payload)


def write_bytes(path: Path, payload: bytes, mode: int = 0o600) -> None:
    """`payload` to `path` atomically, in a folder that exists (session files and exports alike)."""
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    remove_stale_temps(path.parent, path.name)


# json.dumps escapes the C0 controls but writes DEL and the C1 controls raw; the reader (textin's rule)
# drops raw control characters, so a text that holds one (a token of the vocabulary may) is escaped.
_ESCAPE_DEL_AND_C1 = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}


def save(session, path: Path) -> None:
    session.checkpoint()  # text fed outside a turn (one-shot, scripts) becomes one, so the turns add up
    try:
        write(path, to_json(session))
    except OSError as exc:
        reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EFBIG: "the file would be larger than this system allows"}.get(exc.errno) or \
            _short(exc.strerror or exc)
        raise StoreError(f"cannot save to {_shown(path)}: {reason}; the file there (if any) is as it was") from None
    except ValueError as exc:  # text that cannot be written as UTF-8 (lone surrogates)
        raise StoreError(f"cannot save to {_shown(path)}: {_short(exc)}") from None


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Delete temporary files that killed saves left in `folder` (only those for `name`, if given).

    A temporary file is stale when the process that made it is gone, or when it is older than
    STALE_TEMP_SECONDS (for those of earlier versions, whose names carry no process id, only then).
    Never raises; returns what it deleted.
    """
    removed: list[Path] = []
    try:
        entries = os.listdir(folder)
    except (OSError, ValueError):
        return removed
    now = time.time()
    for entry in entries:
        try:
            match = TEMP_NAME.match(entry)
            if match is None and not OLD_TEMP_NAME.match(entry):
                continue
            if name is not None and not entry.startswith(f".{name}."):
                continue
            path = Path(folder) / entry
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            old = now - info.st_mtime > STALE_TEMP_SECONDS
            if old or (match is not None and not _alive(int(match["pid"]))):
                os.unlink(path)
                removed.append(path)
        except (OSError, ValueError, OverflowError):
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0 or pid > 2**22:  # not a process id this system can give
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: alive
    return True


# --- reading ------------------------------------------------------------------------------------


def model_name(data: dict[str, Any]) -> str | None:
    """The model a session file was written with (a hub id or a folder), if it says so sensibly."""
    model = data.get("model") if isinstance(data, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    if not isinstance(name, str) or not name.strip() or len(name) > 4096 or _not_text(name):
        return None
    return name


def read_file(path: Path) -> dict[str, Any]:
    """The JSON of a korepl session file, or StoreError saying why not.

    Reads only a regular file of at most MAX_FILE_BYTES (never a device, pipe or socket, so a wrong
    path cannot hang or fill the memory); UTF-8, else CP949 (textin's rule); JSON without NaN or
    Infinity and not nested without end; format "korepl-session", version VERSION.
    """
    path = Path(path)
    name = _shown(path)
    raw = _read_bytes(path, name)
    text = decode_bytes(raw, name).text
    if text.startswith("\ufeff"):  # a byte order mark, as some Windows editors write
        text = text[1:]
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise StoreError(f"{name}: not a korepl session (its JSON is nested too deeply)") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{name}: not a korepl session (broken or truncated JSON: {exc})") from None
    except (ValueError, OverflowError) as exc:
        raise StoreError(f"{name}: not a korepl session ({_short(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{name}: not a korepl session file")
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        raise StoreError(f"{name}: session format version {_value(version)}; this korepl reads version {VERSION}")
    return data


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        # Look before opening: opening some devices does something (a tape rewinds, a terminal is taken).
        _check_regular(os.stat(path), name)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StoreError(f"{name}: no such file") from None
    except PermissionError:
        raise StoreError(f"{name}: cannot read it (permission denied)") from None
    except OSError as exc:
        raise StoreError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    try:
        _check_regular(os.fstat(fd), name)  # it may have been swapped since the look
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise StoreError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if left <= 0:
        raise StoreError(f"{name}: larger than a session file can be ({_size(MAX_FILE_BYTES)} at most)")
    return b"".join(chunks)


def _check_regular(info: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(f"{name}: a folder, not a session file")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{name}: not a regular file (a device, pipe or socket); sessions are read from files only")
    if info.st_size > MAX_FILE_BYTES:
        raise StoreError(f"{name}: {_size(info.st_size)}, larger than a session file can be "
                         f"({_size(MAX_FILE_BYTES)} at most)")


def _refuse_constant(word: str) -> None:
    raise ValueError(f"it holds {word}, which is not a number korepl writes")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"it holds a number too large ({text[:20]})")
    return value


# --- restoring ----------------------------------------------------------------------------------


def restore(session, data: dict[str, Any], source: str) -> None:
    """Make `session` what `data` describes, or raise StoreError having changed nothing."""
    where = _shown(source)
    try:
        settings, root, current, view_start = _check(session, data, where)
    except StoreError:
        raise
    except SettingError as exc:
        raise StoreError(f"{where}: bad settings: {_short(exc)}") from None
    except turns.TurnError as exc:
        raise StoreError(f"{where}: a damaged turn tree ({_short(exc)})") from None
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError) as exc:
        # Every check above is explicit; this is the net under them, so that no file can end the REPL.
        raise StoreError(f"{where}: a damaged session file ({_short(exc)})") from None
    try:
        session.replace_state(settings, root, current, view_start)  # takes the settings first, or changes nothing
    except SettingError as exc:  # a setting this session cannot follow (one a serving engine cannot honour)
        raise StoreError(f"{where}: its settings cannot be used here: {_short(exc)}") from None


def _check(session, data: Any, where: str) -> tuple[Settings, turns.Turn, turns.Turn, int]:
    """Everything restore needs, from a file checked whole; StoreError (or a ValueError) when it is not sound."""
    if not isinstance(data, dict):
        raise StoreError(f"{where}: not a korepl session file")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if data.get("tokenizer") != tokenizer_fingerprint(session.vocab) or \
            not _same_shape(model.get("shape"), model_fingerprint(session.model)):
        name = model_name(data)
        if name is None or len(name) > 200:
            raise StoreError(f"{where}: written with another model, whose model or tokenizer differs from the one "
                             f"loaded ({session.loaded.name})")
        raise StoreError(f"{where}: written with {name}, whose model or tokenizer differs from the one loaded "
                         f"({session.loaded.name}); start korepl with --model {name}")
    for key, kind in (("text", str), ("ids", list), ("view_start", int), ("turns", dict), ("settings", dict)):
        if key not in data:
            raise StoreError(f"{where}: a damaged session file ('{key}' is missing)")
        if type(data[key]) is not kind:
            raise StoreError(f"{where}: a damaged session file ('{key}' must be "
                             f"{_KIND_WORDS[kind]}, not {_value(data[key])})")
    settings = session.settings.with_values(_settings_values(data["settings"]))
    controls = resolve(session.vocab, settings)  # settings this tokenizer cannot follow are refused here
    session.encode_memory(settings.memory, controls)  # so is a memory longer than half this model's window
    check = _text_check(session.vocab)
    root, current = turns.from_json(data["turns"], _vocab_size(session), check.allowed_controls)
    if current.ids() != data["ids"] or current.text() != data["text"]:
        raise StoreError(f"{where}: a damaged session file (the turns do not add up to the text)")
    view_start, length = data["view_start"], len(data["ids"])
    # korepl's own view always shows at least the last token (and starts at 0 when there are none).
    if not (view_start == 0 or 0 < view_start < length):
        raise StoreError(f"{where}: a damaged session file (the model's view starts at {_value(view_start)}, "
                         f"outside the {length} tokens)")
    _check_texts(check, root, current, controls.newline_token, where)
    return settings, root, current, view_start


def _check_texts(check: _TextCheck, root: turns.Turn, current: turns.Turn, newline_token: str | None,
                 where: str) -> None:
    """Every turn's text says what its ids say; StoreError for the first that does not.

    A turn is read from where a state it begins with, and that is known to agree, ends: its parent's
    state cut back over what the turn re-encoded (`_TextCheck.back_off`), else the nearest
    ancestor's whole state that it still holds.  Only the rest needs reading, so a real session's
    tree costs about its own size.  This is sound because the rule compares texts without
    whitespace or special tokens, which a cut between tokens leaves alike.  When the rest alone does
    not agree (a special token's text cut in two, say), the whole state is read, so no sound file is
    refused.  Whatever the tree's shape, the work is bounded by MAX_CHECK_SIZE.
    """
    sizes: dict[turns.Turn, tuple[int, int]] = {}
    cost = 0

    def spend(amount: int) -> None:
        nonlocal cost
        cost += amount
        if cost > MAX_CHECK_SIZE:
            raise StoreError(f"{where}: too large to check (its turns hold more than {MAX_CHECK_SIZE:,} "
                             f"tokens and characters to compare)")

    for turn, ids, text, cut_ids, cut_text in turns.states(root):
        spend(2 * (len(cut_ids) + len(cut_text)))  # cutting the parent's state, and putting it back
        sizes[turn] = (len(ids), text.length)
        chars = None if turn.parent is None else \
            check.back_off(text, turn.keep_chars, cut_ids, cut_text, newline_token)
        start_ids, start_chars = (turn.keep_ids, chars) if chars is not None else _anchor(turn, sizes)
        spend(len(ids) - start_ids + text.length - start_chars)
        if check.agrees(ids[start_ids:], text.tail(start_chars), newline_token):
            continue
        if start_ids or start_chars:
            spend(len(ids) + text.length)
            if check.agrees(ids, text.tail(0), newline_token):
                continue
        which = "the current turn" if turn is current else "an earlier turn"
        raise StoreError(f"{where}: a damaged session file (the text of {which} is not what its token ids say)")


def _anchor(turn: turns.Turn, sizes: dict[turns.Turn, tuple[int, int]]) -> tuple[int, int]:
    """(ids, characters) of the nearest ancestor's whole state that `turn`'s state begins with, or (0, 0)."""
    keep_ids, keep_chars = turn.keep_ids, turn.keep_chars  # what every turn on the way down kept
    ancestor = turn.parent
    for _ in range(ANCHOR_SEARCH):
        if ancestor is None:
            break
        length, chars = sizes[ancestor]
        if length <= keep_ids and chars <= keep_chars:
            return length, chars
        keep_ids, keep_chars = min(keep_ids, ancestor.keep_ids), min(keep_chars, ancestor.keep_chars)
        ancestor = ancestor.parent
    return 0, 0


_KIND_WORDS = {str: "a text", list: "a list", int: "a whole number", dict: "a table"}
# What JSON may hold for each type of setting (the dataclass's annotations); True is not a number.
_SETTING_TYPES = {"bool": (bool,), "str": (str,), "int": (int,), "float": (int, float), "int | None": (int, type(None)),
                  "str | None": (str, type(None)), "float | None": (int, float, type(None))}


def _settings_values(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored settings, each of the JSON type its field takes; SettingError for anything else."""
    annotations = {f.name: f.type for f in dataclasses.fields(Settings)}
    for name, value in stored.items():
        field = FIELDS_BY_NAME.get(name)
        if field is None:
            raise SettingError(f"unknown setting {_value(name)}")
        if field.is_list:
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise SettingError(f"{name} must be a list of texts (got {_value(value)})")
            continue
        allowed = _SETTING_TYPES.get(str(annotations.get(name)))
        if allowed is not None and type(value) not in allowed:
            raise SettingError(f"{name} cannot be {_value(value)}")
    return stored


def _same_shape(stored: Any, actual: dict[str, Any]) -> bool:
    """The stored model shape is this model's: same keys, values of the same type (True is not 1)."""
    if not isinstance(stored, dict) or stored.keys() != actual.keys():
        return False
    return all(type(stored[k]) is type(actual[k]) and stored[k] == actual[k] for k in actual)


def _vocab_size(session) -> int:
    """Ids a file may hold: those the tokenizer can decode and the model can embed."""
    size = len(session.tokenizer)
    embedded = getattr(session.model.config, "vocab_size", None)
    return min(size, embedded) if type(embedded) is int and embedded > 0 else size


# --- text against ids ---------------------------------------------------------------------------


class _TextCheck:
    """Does a turn's text say what its token ids say?

    They do not agree character for character in sound files: the model is given a space (or a named
    token) for each newline, the start of the text has no leading space, special tokens (</s>, <usr>,
    <unused0>) are in the ids but need not be in the text, <unk> stands for characters the
    vocabulary lacks, and the tokenizer may normalise.  So both sides lose their special tokens and
    their whitespace, the text is normalised as the tokenizer would, and each <unk> (or U+FFFD) of
    the decoded ids may stand for any run of the text's characters, even none (a tab becomes <unk>
    and then is whitespace).  Every other character must be there, in order.  Linear in the length.
    """

    def __init__(self, vocab):
        tokenizer = vocab.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
        self.normalize = normalizer.normalize_str if normalizer is not None else None
        self.decode = vocab.decode
        unk = tokenizer.unk_token if isinstance(tokenizer.unk_token, str) and tokenizer.unk_token else None
        specials = {s for s in (*vocab.added, *tokenizer.all_special_tokens) if isinstance(s, str) and s}
        self.specials = _alternation(specials)  # the text's side: all of them, <unk> included
        self.others = _alternation(specials - {unk})  # the decoded side: <unk> is a wildcard there
        self.longest = max(map(len, specials), default=1)
        self.wildcard = re.compile("|".join(re.escape(s) for s in (unk, "\ufffd") if s))
        self.space = re.compile(r"[\s\u2581]+")  # whitespace, and SentencePiece's word-start marker
        # Control characters the vocabulary itself can write: generated text may hold them.
        every = vocab.decode(range(len(tokenizer)))
        self.allowed_controls = "".join(sorted(set(CONTROL.findall(every))))

    def agrees(self, ids: list[int], text: str, newline_token: str | None) -> bool:
        return _glob_match(self._decoded(ids, newline_token), self._plain_text(text, newline_token))

    def _decoded(self, ids: list[int], newline_token: str | None) -> list[str]:
        """The decoded ids without whitespace or special tokens, split where a wildcard stands."""
        decoded = self.decode(ids)
        if newline_token:
            decoded = decoded.replace(newline_token, " ")
        return [self.space.sub("", self.others.sub(" ", part) if self.others else part)
                for part in self.wildcard.split(decoded)]

    def _plain_text(self, text: str, newline_token: str | None) -> str:
        if newline_token:
            text = text.replace(newline_token, " ")
        if self.specials:
            text = self.specials.sub(" ", text)
        if self.normalize is not None:
            text = self.normalize(text)
            if self.specials:  # normalising can spell one (a full-width <usr>)
                text = self.specials.sub(" ", text)
        return self.space.sub("", text)

    def back_off(self, text: turns.StateText, keep_chars: int, cut_ids: list[int], cut_text: str,
                 newline_token: str | None) -> int | None:
        """How much of the parent's text agrees with the parent's ids less `cut_ids` (which the turn
        re-encoded: a word it joined to, a space before it), or None when that cannot be told cheaply.

        The parent's text is `text`'s first keep_chars characters plus `cut_text`; it agrees with the
        parent's ids.  When the cut ids decode (without wildcards) to exactly what the end of the
        parent's text says, taking them off the ids and that end off the text leaves the two agreeing.
        """
        parts = self._decoded(cut_ids, newline_token)
        if len(parts) != 1:
            return None
        wanted, after = parts[0], self._plain_text(cut_text, newline_token)
        if not wanted.endswith(after):
            return None
        need = len(wanted) - len(after)  # characters to give back from the kept text
        start, window = keep_chars, max(64, 2 * need)
        while need:
            low = max(0, keep_chars - window)
            piece = text.slice(low, keep_chars)
            count = 0
            for index in range(len(piece) - 1, -1, -1):
                if not self.space.match(piece[index]):
                    count += 1
                    if count == need:
                        start = low + index
                        break
            if count == need or low == 0:
                break
            window *= 4
        if need and start == keep_chars:
            return None
        given_back = text.slice(start, keep_chars)
        if self._plain_text(given_back + cut_text, newline_token) != wanted:
            return None
        # The cut must leave the text's two sides read alike: no special token's text (nor the newline
        # token's) runs across it, and the normaliser treats the two sides as it treats the whole.
        reach = max(self.longest, len(newline_token or ""), NORMALISER_REACH)
        low, high = max(0, start - reach), start + reach
        around = text.slice(low, min(high, keep_chars)) + (cut_text[: high - keep_chars] if high > keep_chars else "")
        left, right = around[: start - low], around[start - low:]
        if self._straddles(left + right, len(left), newline_token):
            return None
        if self.normalize is not None and self.normalize(left) + self.normalize(right) != self.normalize(left + right):
            return None
        return start

    def _straddles(self, window: str, offset: int, newline_token: str | None) -> bool:
        """Whether a special token's text (or the newline token's) in `window` runs across `offset`."""
        patterns = [p for p in (self.specials,) if p is not None]
        if newline_token:
            patterns.append(re.compile(re.escape(newline_token)))
        return any(m.start() < offset < m.end() for p in patterns for m in p.finditer(window))


def _alternation(words: set[str]) -> re.Pattern[str] | None:
    """One pattern for any of `words`, longest first (so </s> is not taken for a shorter token)."""
    return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))) if words else None


def _glob_match(parts: list[str], text: str) -> bool:
    """Whether `text` is parts[0] * parts[1] * ... parts[-1], each * any run of characters (even none).

    Greedy leftmost matching is exact for this pattern and takes linear time (no backtracking, so a
    hostile file with many <unk> cannot make it slow).
    """
    if len(parts) == 1:
        return parts[0] == text
    first, last = parts[0], parts[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    position = len(first)
    for part in parts[1:-1]:
        if part:
            found = text.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
    return True


_TEXT_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_check(vocab) -> _TextCheck:
    """One check per vocabulary (building it decodes the whole vocabulary once)."""
    check = _TEXT_CHECKS.get(vocab)
    if check is None:
        check = _TEXT_CHECKS[vocab] = _TextCheck(vocab)
    return check


# --- the sessions folder ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    path: Path
    size: int  # bytes
    modified: float  # seconds since the epoch
    tokens: int
    first_words: str  # the text's first words, on one line ("" when it has none)
    has_text: bool = False  # the text is not empty


def new_session_path(folder: Path) -> Path:
    """Where this run of the REPL keeps its session: local time and process id, so no two runs share one."""
    return Path(folder) / f"{time.strftime(SESSION_TIME_FORMAT)}-{os.getpid()}.json"


def session_files(folder: Path) -> list[SessionInfo]:
    """The readable session files in `folder`, newest first (by the time in the name, then modification).

    Each file is read with `read_file`; a file that cannot be read is left out, never an error.
    Temporary files and files not ending in .json are ignored.
    """
    found = []
    for path, modified in _newest_first(folder):
        info = _info(path, modified)
        if info is not None:
            found.append(info)
    return found


def latest_with_text(folder: Path, legacy: Path | None = None) -> Path | None:
    """The newest readable session file in `folder` whose text is not empty (files are read newest
    first, only until one has text).

    When none has text: the file earlier versions saved on exit (`paths.last_session_file()`, or
    `legacy`), if it exists, so that `--resume` after an upgrade still finds it.
    """
    for path, modified in _newest_first(folder):
        info = _info(path, modified)
        if info is not None and info.has_text:
            return path
    legacy = paths.last_session_file() if legacy is None else Path(legacy)
    return legacy if legacy.is_file() else None


def prune(folder: Path, keep: int, protect: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete the REPL's own session files in `folder` beyond the `keep` newest; returns what it deleted.

    Only files named as `new_session_path` names them are touched (never a file saved with /save),
    never one in `protect`, and never the newest file with text (what --resume continues).  Cheap
    enough to run after every save: nothing is read while there is nothing to delete, and then only
    the start of the newest files, until one has text.  Never raises.
    """
    deleted: list[Path] = []
    try:
        files = _newest_first(folder)
        own = [path for path, _ in files if SESSION_NAME.match(path.name)]
        doomed = own[max(0, keep):]
        if not doomed:
            return deleted
        spared = {_same_file_key(p) for p in protect}
        latest = next((path for path, _ in files if _has_text(path)), None)
        if latest is not None:
            spared.add(_same_file_key(latest))
        for path in doomed:
            if _same_file_key(path) in spared:
                continue
            try:
                path.unlink()
                deleted.append(path)
            except OSError:
                continue
    except (OSError, ValueError, TypeError):
        pass
    return deleted


def _info(path: Path, modified: float) -> SessionInfo | None:
    try:
        data = read_file(path)
        size = os.stat(path).st_size
    except (StoreError, OSError):
        return None
    ids, text = data.get("ids"), data.get("text")
    text = text if isinstance(text, str) else ""
    tokens = len(ids) if isinstance(ids, list) else 0
    return SessionInfo(path, size, modified, tokens, _first_words(text), has_text=text != "")


# Where korepl's own files say whether the text is empty: the first "text" key, the top-level one, near the start.
_TEXT_KEY = re.compile(rb'"text": ?"(.)', re.DOTALL)
_HEAD_BYTES = 64 * 1024


def _has_text(path: Path) -> bool:
    """Whether a session file's text is not empty, from the start of the file when it can tell (a
    file korepl wrote says so in its first kilobytes), else from the whole file read safely."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            head = os.read(fd, _HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError:
        return False
    found = _TEXT_KEY.search(head)
    if found:
        return found.group(1) != b'"'
    info = _info(path, 0.0)
    return info is not None and info.has_text


def _newest_first(folder: Path) -> list[tuple[Path, float]]:
    return sorted(_json_files(folder), key=lambda pair: _sort_key(*pair), reverse=True)


def _json_files(folder: Path) -> list[tuple[Path, float]]:
    """(path, modification time) of the regular .json files in `folder` (no temporary or hidden ones)."""
    found = []
    try:
        entries = os.listdir(folder)
    except (OSError, ValueError):
        return found
    for entry in entries:
        if entry.startswith(".") or not entry.endswith(".json"):
            continue
        path = Path(folder) / entry
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((path, info.st_mtime))
    return found


def _sort_key(path: Path, modified: float) -> tuple[float, float]:
    """When a file was made: the time in its name (the REPL's own files), else its modification time."""
    match = SESSION_NAME.match(path.name)
    if match:
        try:
            return time.mktime(time.strptime(match["time"], SESSION_TIME_FORMAT)), modified
        except (ValueError, OverflowError):
            pass
    return modified, modified


def _same_file_key(path: Path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def _first_words(text: str) -> str:
    clean = CONTROL.sub("", ESCAPE_SEQUENCE.sub("", text))
    clean = clean.encode("utf-8", "replace").decode("utf-8")
    words = clean.split()
    shown = " ".join(words[:FIRST_WORDS])
    return shown if len(shown) <= 60 else shown[:59] + "…"


# --- messages -----------------------------------------------------------------------------------


def _shown(path: Any) -> str:
    """A file name fit for a one-line message: undecodable bytes and control characters escaped."""
    text = str(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return CONTROL.sub(lambda m: ascii(m.group())[1:-1], text.replace("\n", "\\n").replace("\t", "\\t"))


def _not_text(text: str) -> bool:
    return bool(CONTROL.search(text)) or "\n" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _value(value: Any, limit: int = 40) -> str:
    return turns._short(value, limit)


def _short(exc: BaseException | str, limit: int = 200) -> str:
    """An exception's message on one line, cut short."""
    text = _shown(str(exc))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _size(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"
