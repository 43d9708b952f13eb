"""Where credentials live: :class:`TokenStore` and its implementations.

* :class:`MemoryStore`: this process only, nothing survives a restart (the default).
* :class:`FileStore`: one JSON file, shared by the processes of one host.
* :class:`SQLiteStore`: an SQLite database, for many credentials on one host.
* :class:`RedisStore`: Redis, shared by every process and host; needs
  ``pip install 'asynctoken[redis]'`` and is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import TokenStore
from ._file import FileStore
from ._memory import MemoryStore
from ._sqlite import SQLiteStore

if TYPE_CHECKING:
    from ._redis import RedisStore

__all__ = ["FileStore", "MemoryStore", "RedisStore", "SQLiteStore", "TokenStore"]


def __getattr__(name: str) -> Any:
    # RedisStore imports redis, an optional dependency: load it on first use only, so that
    # ``import asynctoken`` works without it and the ImportError says what to install.
    if name == "RedisStore":
        from ._redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"RedisStore"})
