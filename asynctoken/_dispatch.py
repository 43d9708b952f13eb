"""Delivering events to the ``on_event`` subscriber: queued, in order, from a task of its own.

The step that emits an event only appends it to a queue; a task drains the queue and calls the
subscriber. A subscriber that is slow (an awaited call) or raises therefore never delays or
breaks a refresh: its failures are logged, and past :data:`MAX_PENDING_EVENTS` waiting events,
newer ones are dropped (logged once per episode).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging

from .events import Event, EventCallback

__all__ = ["MAX_PENDING_EVENTS", "Dispatcher"]

logger = logging.getLogger("asynctoken")

#: Events waiting for a subscriber beyond this are dropped.
MAX_PENDING_EVENTS = 10_000


class Dispatcher:
    """Delivers events to the subscriber from a task of its own, in order."""

    __slots__ = ("_callback", "_closed", "_dropped", "_queue", "_task")

    def __init__(self, callback: EventCallback) -> None:
        self._callback = callback
        self._queue: collections.deque[Event] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._dropped = 0
        self._closed = False

    def put(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._queue) >= MAX_PENDING_EVENTS:
            if not self._dropped:
                logger.warning(
                    "the on_event subscriber keeps %d events waiting; newer events are dropped",
                    len(self._queue),
                )
            self._dropped += 1
            return
        self._queue.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name="asynctoken-events"
            )

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                event = queue.popleft()
                try:
                    result = self._callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.warning(
                        "the on_event subscriber failed on %s", type(event).__name__, exc_info=True
                    )
                if not queue and self._dropped:
                    logger.warning("%d events were dropped", self._dropped)
                    self._dropped = 0
        finally:
            self._task = None

    async def aclose(self, timeout: float) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop taking events."""
        self._closed = True
        task = self._task
        if task is None:
            return
        _, pending = await asyncio.wait({task}, timeout=timeout)
        if pending:
            logger.warning(
                "closing: the on_event subscriber did not finish within %g s; %d event(s) "
                "not delivered",
                timeout,
                len(self._queue),
            )
            task.cancel()
            await asyncio.wait({task})
        self._queue.clear()
