"""Where korepl keeps the user's files: config in the config folder, history (and sessions) in the state folder.

platformdirs gives each platform's convention (on Linux $XDG_CONFIG_HOME and $XDG_STATE_HOME).
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "korepl"


def user_config_file() -> Path:
    return platformdirs.user_config_path(APP) / "config.toml"


def state_dir() -> Path:
    return platformdirs.user_state_path(APP)


def cache_dir() -> Path:
    """What korepl can rebuild (the compiled step's inductor cache): the platform's cache folder."""
    return platformdirs.user_cache_path(APP)


def history_file() -> Path:
    return state_dir() / "history"


def sessions_dir() -> Path:
    return state_dir() / "sessions"


def last_session_file() -> Path:
    """Where the REPL saves the session on exit, for `korepl --resume`."""
    return state_dir() / "last-session.json"
