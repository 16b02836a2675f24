"""Errors the CLI turns into one-line messages and exit code 2 (no traceback)."""
from __future__ import annotations


class InputError(Exception):
    """Bad input, bad option value or an unusable store: the user's to fix (exit 2)."""


def require(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)
