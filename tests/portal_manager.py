"""A synchronous face on a real TokenManager, for the sync flows' tests.

The TokenManager runs on an event loop in its own thread (anyio's blocking portal); the methods
block the calling thread. It offers exactly what a synchronous client adapter may use:
``get_token(key)`` and ``token_rejected(key, token)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from asynctoken import Token, TokenManager


class PortalManager:
    """``with PortalManager(lambda: TokenManager(...)) as tm: tm.add(...); tm.get_token(key)``."""

    def __init__(self, factory: Callable[[], TokenManager]) -> None:
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        self.manager: TokenManager = self._portal.call(self._create, factory)

    @staticmethod
    async def _create(factory: Callable[[], TokenManager]) -> TokenManager:
        return factory()

    def add(self, key: str, provider: Any, **kwargs: Any) -> bool:
        async def add() -> bool:
            return await self.manager.add(key, provider, **kwargs)

        return self._portal.call(add)

    def get_token(self, key: str) -> Token:
        return self._portal.call(self.manager.get_token, key)

    def token_rejected(self, key: str, token: Token) -> Token | None:
        return self._portal.call(self.manager.token_rejected, key, token)

    def close(self) -> None:
        try:
            self._portal.call(self.manager.aclose)
        finally:
            self._stack.close()

    def __enter__(self) -> PortalManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
