"""What the command prints: colours, human durations and counts, masked tokens.

Colours only on a terminal and never with ``NO_COLOR``; a token is never printed beyond the
short prefix that :func:`asynctoken._secrets.mask` keeps.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Protocol, TextIO

from .._secrets import mask
from .._token import Token
from ._exit import OutputError

__all__ = ["GuardedOutput", "Output", "Style", "human_delta", "is_terminal", "printable"]


class Output(Protocol):
    """What the commands print to: :data:`sys.stdout`, or a :class:`GuardedOutput` of it."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


class GuardedOutput:
    """Standard output, whose write failures become :class:`OutputError` (exit code 4).

    Only failures of this stream are turned into output errors, so that ``main()`` can tell a
    full disk or a closed pipe on stdout from an ``OSError`` anywhere else.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str, /) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _output_error(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _output_error(exc) from None

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def _output_error(exc: OSError) -> OutputError:
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return OutputError("standard output was closed by its reader", broken_pipe=True)
    words = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    return OutputError(f"cannot write to standard output: {words}")


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal that takes escape sequences (not ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    return os.environ.get("TERM") != "dumb" and callable(isatty) and bool(isatty())


def printable(text: str) -> str:
    """``text`` with every non-printable character (controls, escapes, bidi overrides, line
    breaks) written as its Python escape: nothing from a store can drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Style:
    """ANSI colours, or nothing: colours only on a terminal and never with ``NO_COLOR``."""

    __slots__ = ("enabled",)

    def __init__(self, stream: object, *, no_color: bool = False) -> None:
        self.enabled = not no_color and not os.environ.get("NO_COLOR") and is_terminal(stream)

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


def local_time(epoch: float) -> str:
    """``epoch`` as a local date and time; never fails (a far-future expiry is said so)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):
        return "beyond the year 9999" if epoch > 0 else "before the year 1"


def _token_line(token: Token, style: Style) -> str:
    remaining = token.expires_at - time.time()
    when = local_time(token.expires_at)
    expiry = human_delta(remaining)
    expiry = style.green(expiry) if remaining > 0 else style.red(expiry)
    refresh = printable(mask(token.refresh_token)) if token.refresh_token else "none"
    return (
        f"  access token   {printable(mask(token.access_token))}  expires {expiry} ({when})\n"
        f"  refresh token  {refresh}"
    )
