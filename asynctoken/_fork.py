"""Forked children: objects told, right after a fork, that they now live in a copy.

A forked child inherits a copy of every object but none of the parent's threads, and shares the
parent's open sockets and file descriptions. An object whose resources belong to the parent's
event loop (a session, store connections, locks, tasks) registers here with :func:`watch`; in
each child, ``os.register_at_fork`` calls its ``_after_fork_in_child()`` before anything else
runs, so that it can refuse to be used there (or start afresh). Nothing is paid per call.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["watch"]


class Forkable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Forkable] = weakref.WeakSet()


def watch(obj: Forkable) -> None:
    """Have ``obj._after_fork_in_child()`` called in every child forked from now on."""
    _live.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_live):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
