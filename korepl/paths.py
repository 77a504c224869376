"""Where korepl keeps the user's files: config in the config folder, history (and sessions) in the state folder.

platformdirs gives each platform's convention (on Linux $XDG_CONFIG_HOME and $XDG_STATE_HOME).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "korepl"
# Read before torch is imported: importing inductor sets this variable to its own default.
_INDUCTOR_DIR_CHOSEN = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def user_config_file() -> Path:
    return platformdirs.user_config_path(APP) / "config.toml"


def state_dir() -> Path:
    return platformdirs.user_state_path(APP)


def cache_dir() -> Path:
    """What korepl can rebuild (the compiled step's inductor cache): the platform's cache folder."""
    return platformdirs.user_cache_path(APP)


def inductor_cache_dir() -> Path:
    """Where the compiled step's inductor artefacts live: TORCHINDUCTOR_CACHE_DIR if the user set it, else ours."""
    return Path(_INDUCTOR_DIR_CHOSEN) if _INDUCTOR_DIR_CHOSEN else cache_dir() / "inductor"


def history_file() -> Path:
    return state_dir() / "history"


def sessions_dir() -> Path:
    return state_dir() / "sessions"


def last_session_file() -> Path:
    """Where the REPL saves the session on exit, for `korepl --resume`."""
    return state_dir() / "last-session.json"
