"""Group commit: concurrent writes of one process share a single store write.

When a thousand credentials are refreshed at once, a store that writes each one on its own pays
a thousand times its per-write cost (a whole-file rewrite and fsync for FileStore, a transaction
and fsync for SQLiteStore). :class:`WriteBatcher` queues the changes instead: the first writer
becomes the leader and applies, in a worker thread, every change queued so far in one commit;
changes queued meanwhile go into the next commit. Each change is applied in queue order and gets
its own result or exception, so compare-and-swap semantics are those of separate writes. A
writer alone is committed at once: batching costs nothing without concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio.to_thread

__all__ = ["Outcome", "WriteBatcher"]

_C = TypeVar("_C")

# Writers woken per event-loop iteration when a batch is done.
_WAKE_SLICE = 32

#: What a commit returns for one change: its result, or the exception to raise in its writer.
Outcome = tuple[bool, Any]


class WriteBatcher(Generic[_C]):
    """Queues changes of type ``_C`` and commits them in batches of at most ``limit``.

    Args:
        commit: applies a batch of changes in one store write (in a worker thread) and returns
            one :data:`Outcome` per change, in order: ``(True, result)`` or
            ``(False, exception)``. If it raises, every change of the batch fails with that
            exception.
        limit: the most changes in one commit (bounds the latency of a batch).
    """

    __slots__ = ("_commit", "_draining", "_limit", "_mutex", "_pending")

    def __init__(self, commit: Callable[[Sequence[_C]], list[Outcome]], limit: int = 1000) -> None:
        self._commit = commit
        self._limit = limit
        self._mutex = threading.Lock()
        self._pending: list[tuple[_C, asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._draining = False

    async def submit(self, change: _C) -> Any:
        """Queue ``change``; return its result once a commit has applied it.

        A writer cancelled while waiting does not withdraw its change: it may be applied (as a
        write already handed to a worker thread would be).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._mutex:
            self._pending.append((change, loop, future))
            lead = not self._draining
            self._draining = True
        if lead:
            # Shielded: the leader's cancellation must not strand the changes of others.
            await asyncio.shield(anyio.to_thread.run_sync(self._drain))
        return await future

    def _drain(self) -> None:
        """Commit batches until the queue is empty (in a worker thread)."""
        while True:
            with self._mutex:
                batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
                if not batch:
                    self._draining = False
                    return
            try:
                outcomes = self._commit([change for change, _, _ in batch])
                if len(outcomes) != len(batch):  # pragma: no cover - a bug in a commit function
                    raise RuntimeError("a commit returned the wrong number of outcomes")
            except BaseException as exc:  # every change of the batch fails with it
                outcomes = [(False, exc)] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
            for (_, loop, future), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, outcome))
            for loop, settled in by_loop.items():
                # RuntimeError: that event loop is closed, nobody waits for these writes.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle_some, loop, settled, 0)


def _settle_some(
    loop: asyncio.AbstractEventLoop, settled: list[tuple[asyncio.Future[Any], Outcome]], start: int
) -> None:
    """Wake the writers of a batch a slice per loop iteration: a thousand writers resumed in one
    iteration would stall the event loop for as long as their next steps take together."""
    end = start + _WAKE_SLICE
    for future, outcome in settled[start:end]:
        _settle(future, outcome)
    if end < len(settled):
        loop.call_soon(_settle_some, loop, settled, end)


def _settle(future: asyncio.Future[Any], outcome: Outcome) -> None:
    if future.done():  # the writer was cancelled
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
