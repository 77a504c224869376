"""The one base for what a user can get wrong: caught in one place and shown as its message, never a traceback.

Each module raises its own kind (a bad setting, a damaged session file, a move that cannot be made
now); the REPL's command runner and the CLI catch this base alone.  Torch-free, so anything can import it.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something asked for that cannot be done; `str(exc)` is the message for the user, as it is."""
