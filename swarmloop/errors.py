"""User errors: printed as one line and exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a flag, a config value); the message is the whole story."""
