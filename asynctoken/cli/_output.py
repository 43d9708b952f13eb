"""What the command prints: colours, human durations and counts, masked tokens.

Colours only on a terminal and never with ``NO_COLOR``; a token is never printed beyond the
short prefix that :func:`asynctoken._secrets.mask` keeps.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

from .._secrets import mask
from .._token import Token

__all__ = ["Style", "human_delta"]


class Style:
    """ANSI colours, or nothing: colours only on a terminal and never with ``NO_COLOR``."""

    __slots__ = ("enabled",)

    def __init__(self, stream: TextIO, *, no_color: bool = False) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = (
            not no_color
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb"
            and callable(isatty)
            and bool(isatty())
        )

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)


def human_delta(seconds: float) -> str:
    """``"in 42 min"`` for a future expiry, ``"expired 3 h ago"`` for a past one."""
    amount = abs(seconds)
    if amount < 90:
        text = f"{amount:.0f} s"
    elif amount < 90 * 60:
        text = f"{amount / 60:.0f} min"
    elif amount < 48 * 3600:
        text = f"{amount / 3600:.0f} h"
    else:
        text = f"{amount / 86400:.0f} d"
    return f"in {text}" if seconds >= 0 else f"expired {text} ago"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _token_line(token: Token, style: Style) -> str:
    remaining = token.expires_at - time.time()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(token.expires_at))
    expiry = human_delta(remaining)
    expiry = style.green(expiry) if remaining > 0 else style.red(expiry)
    refresh = mask(token.refresh_token) if token.refresh_token else "none"
    return (
        f"  access token   {mask(token.access_token)}  expires {expiry} ({when})\n"
        f"  refresh token  {refresh}"
    )
