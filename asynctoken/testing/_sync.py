"""Synchronisation helpers for tests: a gate that parks requests, and arrival counters.

Both create their futures lazily on the running loop, so a server object can be built outside
any event loop and used under pytest-asyncio's per-test loops.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ArrivalCounter", "Gate", "GateHold", "ServerClosedError", "Synchronisation"]


class ServerClosedError(RuntimeError):
    """Raised into parked requests and waiters when the server closes."""


class Gate:
    """Open by default; while held, :meth:`passage` parks callers until released."""

    __slots__ = ("_closed", "_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._closed = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> bool:
        return self._held

    @property
    def parked(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    def hold(self) -> None:
        self._held = True

    def release(self, n: int | None = None) -> int:
        """Let parked callers through: all of them (and reopen) when ``n`` is None, else the
        ``n`` oldest (the gate stays held). Returns how many were let through."""
        if n is None:
            self._held = False
            n = len(self._waiters)
        released = 0
        while self._waiters and released < n:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                released += 1
        return released

    async def passage(self) -> None:
        if self._closed:
            raise ServerClosedError
        if not self._held:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def close(self) -> None:
        self._closed = True
        self._held = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ServerClosedError())


class ArrivalCounter:
    """Counts arrivals; :meth:`wait_for` returns once a count is reached."""

    __slots__ = ("_closed", "_waiters", "count")

    def __init__(self) -> None:
        self.count = 0
        self._closed = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def increment(self) -> None:
        self.count += 1
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= self.count:
                waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._waiters = still

    async def wait_for(self, n: int, timeout: float | None, what: str) -> int:
        if self.count >= n:
            return self.count
        if self._closed:
            raise ServerClosedError(f"the server is closed; {self.count} of {n} {what} arrived")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"only {self.count} of {n} {what} arrived within {timeout} s"
            ) from None
        return self.count

    def close(self) -> None:
        self._closed = True
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ServerClosedError(f"the server closed at {self.count}"))
        self._waiters = []


class GateHold:
    """Returned by ``FakeOAuthServer.hold()``; as a context manager, releases on exit."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def __enter__(self) -> GateHold:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._gate.release()

    def __repr__(self) -> str:
        return f"<GateHold held={self._gate.held} parked={self._gate.parked}>"


class Synchronisation:
    """The synchronisation part of :class:`~asynctoken.testing.FakeOAuthServer`: the gate and
    the arrival counters."""

    _gate: Gate
    _arrived: ArrivalCounter
    _answered: ArrivalCounter
    _delivered: ArrivalCounter
    _api_arrived: ArrivalCounter

    def hold(self) -> GateHold:
        """Close the gate: token requests are still received, recorded and counted (so
        :meth:`wait_for_token_requests` sees them) but wait before being decided and answered.

        Returns:
            An object that, used as ``with server.hold():``, calls :meth:`release` on exit.
        """
        self._gate.hold()
        return GateHold(self._gate)

    def release(self, n: int | None = None) -> int:
        """Let parked token requests go on.

        Args:
            n: ``None`` reopens the gate and releases every parked request; a number releases
                the ``n`` oldest and keeps the gate held.

        Returns:
            How many parked requests were released.
        """
        return self._gate.release(n)

    @property
    def held(self) -> bool:
        """Whether the gate is closed."""
        return self._gate.held

    @property
    def parked(self) -> int:
        """Token requests currently waiting at the gate."""
        return self._gate.parked

    async def wait_for_token_requests(self, n: int, timeout: float | None = 5.0) -> int:
        """Return once ``n`` token requests have arrived (been read and recorded).

        With the gate held, the ``n`` requests are parked by the time this returns. Requests
        arrived before the call count.

        Returns:
            The number of token requests received so far (``>= n``).

        Raises:
            TimeoutError: fewer than ``n`` arrived within ``timeout`` seconds.
            RuntimeError: the server closed before ``n`` arrived.
        """
        return await self._arrived.wait_for(n, timeout, "token requests")

    async def wait_for_token_responses(self, n: int, timeout: float | None = 5.0) -> int:
        """Return once ``n`` token requests have been decided: their record's ``outcome`` is
        final and the answer is being written. Like :meth:`wait_for_token_requests` otherwise."""
        return await self._answered.wait_for(n, timeout, "token responses")

    async def wait_for_token_deliveries(self, n: int, timeout: float | None = 5.0) -> int:
        """Return once ``n`` token answers have been sent in full or dropped: their record's
        :attr:`~asynctoken.testing.TokenRequest.delivered` is ``True`` or ``False``. Like
        :meth:`wait_for_token_requests` otherwise."""
        return await self._delivered.wait_for(n, timeout, "token answers delivered or dropped")

    async def wait_for_api_requests(self, n: int, timeout: float | None = 5.0) -> int:
        """Return once ``n`` protected-endpoint requests have arrived."""
        return await self._api_arrived.wait_for(n, timeout, "API requests")
