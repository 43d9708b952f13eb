"""A manual clock for tests: time moves only when the test says so."""

from __future__ import annotations

import math

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until :meth:`advance` is called.

    Implements asynctoken's :class:`~asynctoken.Clock` protocol, so the same instance can be
    handed to the token manager and to :class:`~asynctoken.testing.FakeOAuthServer`: both then
    agree on when a token expires, and a test can jump past an expiry without sleeping.

    Example::

        clock = FakeClock()
        server = FakeOAuthServer("keliweb", clock=clock, expires_in=3600)
        ...
        clock.advance(3601)  # every access token issued so far is now expired

    Args:
        time: the initial wall-clock reading, in unix epoch seconds.
        monotonic: the initial monotonic reading.
    """

    __slots__ = ("_monotonic", "_time")

    def __init__(self, time: float = 1_700_000_000.0, *, monotonic: float = 1_000.0) -> None:
        _check_finite("time", time)
        _check_finite("monotonic", monotonic)
        self._time = float(time)
        self._monotonic = float(monotonic)

    def monotonic(self) -> float:
        """Seconds on the monotonic clock; only :meth:`advance` moves it."""
        return self._monotonic

    def time(self) -> float:
        """Unix epoch seconds; moved by :meth:`advance` and :meth:`set_wall_time`."""
        return self._time

    def advance(self, seconds: float) -> None:
        """Move both clocks forward.

        Args:
            seconds: how far to move, ``>= 0``.

        Raises:
            ValueError: ``seconds`` is negative or not finite (monotonic time never goes back).
        """
        _check_finite("seconds", seconds)
        if seconds < 0:
            raise ValueError("a clock cannot be advanced by a negative amount")
        self._monotonic += seconds
        self._time += seconds

    def set_wall_time(self, time: float) -> None:
        """Step the wall clock only, as NTP or a suspended laptop would; may go backwards.

        The monotonic clock is left alone, which lets a test check that decisions are taken on
        monotonic time while ``expires_at`` values follow the wall clock.

        Args:
            time: the new unix epoch reading.

        Raises:
            ValueError: ``time`` is not finite.
        """
        _check_finite("time", time)
        self._time = float(time)

    def __repr__(self) -> str:
        return f"FakeClock(time={self._time!r}, monotonic={self._monotonic!r})"


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
