"""Masking of secrets for reprs, logs and error messages."""

from __future__ import annotations

__all__ = ["mask"]

_PREFIX = 4
_MIN_LEN_FOR_PREFIX = 12


def mask(secret: str | None) -> str:
    """Return a printable stand-in for a secret that reveals at most a short prefix.

    Secrets shorter than 12 characters reveal nothing; longer ones keep their first four
    characters so that a person can tell two credentials apart in a log.

    Args:
        secret: the value to hide.

    Returns:
        ``"None"`` for ``None``, ``"…"`` for short secrets, else ``"abcd…"``.
    """
    if secret is None:
        return "None"
    if len(secret) < _MIN_LEN_FOR_PREFIX:
        return "…"
    return secret[:_PREFIX] + "…"
