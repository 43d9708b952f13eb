"""Clocks: a monotonic clock for decisions, a wall clock for what is stored."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where the manager reads time from; inject a fake one in tests.

    ``monotonic`` drives every decision (fresh, stale, expired, cooldowns); ``time`` (unix epoch
    seconds) is only used to write ``Token.expires_at`` and to compare tokens read from a store
    written by another process.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Unix epoch seconds."""
        ...


class SystemClock:
    """The real clocks: :func:`time.monotonic` and :func:`time.time`."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"
