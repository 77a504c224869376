"""Session files: versioned JSON written atomically, checked whole before anything is restored.

A file holds the text, the token ids, the turn tree, the settings and which model and tokenizer wrote
it.  `write` goes through a temporary file, fsync and rename, so a crash mid-save leaves the previous
file as it was.  `read_file` + `restore` refuse a corrupt, truncated or foreign file with one clear
StoreError and leave the session untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from korepl import turns
from korepl.controls import resolve
from korepl.settings import FIELDS, SettingError

FORMAT = "korepl-session"
VERSION = 1


class StoreError(ValueError):
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


def write(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` atomically: temporary file in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def save(session, path: Path) -> None:
    session.checkpoint()  # text fed outside a turn (one-shot, scripts) becomes one, so the turns add up
    try:
        write(path, to_json(session))
    except OSError as exc:
        raise StoreError(f"cannot save to {path}: {exc.strerror or exc}") from None


def model_name(data: dict[str, Any]) -> str | None:
    """The model a session file was written with (a hub id or a folder), if it says."""
    model = data.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else None


def read_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not a korepl session (broken or truncated JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path}: not a korepl session file")
    if data.get("version") != VERSION:
        raise StoreError(f"{path}: session format version {data.get('version')!r}; this korepl reads version {VERSION}")
    return data


def restore(session, data: dict[str, Any], source: str) -> None:
    """Make `session` what `data` describes, or raise StoreError having changed nothing."""
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if data.get("tokenizer") != tokenizer_fingerprint(session.vocab) or \
            model.get("shape") != model_fingerprint(session.model):
        written_with = model.get("name", "another model")
        raise StoreError(f"{source}: written with {written_with}, whose model or tokenizer differs from the one "
                         f"loaded ({session.loaded.name}); start korepl with --model {written_with}")
    try:
        settings = session.settings.with_values(_settings_values(data["settings"]))
        resolve(session.vocab, settings)  # settings this tokenizer cannot follow are refused here
        root, current = turns.from_json(data["turns"])
        ids, text, view_start = data["ids"], data["text"], data["view_start"]
        if current.ids() != ids or current.text() != text:
            raise ValueError("the turns do not add up to the text")
        vocab_size = len(session.tokenizer)
        if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
            raise ValueError("token ids outside the vocabulary")
        if not isinstance(view_start, int) or not (view_start == 0 or 0 < view_start < len(ids)):
            raise ValueError("a bad model view")
    except SettingError as exc:
        raise StoreError(f"{source}: bad settings: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StoreError(f"{source}: a damaged session file ({exc})") from None
    session.replace_state(settings, root, current, view_start)


def _settings_values(stored: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(stored, dict):
        raise ValueError("settings are not a table")
    known = {f.name for f in FIELDS}
    return {k: v for k, v in stored.items() if k in known}
