"""The hot path that counts its fresh hits, for ``asynctoken.cache.lookups``.

Only a manager whose telemetry is on (``opentelemetry-api`` installed, ``telemetry=True``)
counts: its class becomes :class:`CountingTokenManager` when it is built, whose hot path adds
one to an integer per fresh hit. Every other manager runs the plain hot path, with no work per
call for metrics. The counts are read when a metric reader collects. (A subclass of
``TokenManager`` keeps its own class: its fresh hits are not counted, its stale hits and misses
are.)
"""

from __future__ import annotations

from ._manager import TokenManager
from ._token import Token

__all__ = ["CountingTokenManager"]


class CountingTokenManager(TokenManager):
    """A :class:`TokenManager` whose hot path counts fresh hits (same state, same API)."""

    __slots__ = ()

    async def get_token(self, key: str) -> Token:
        """See :meth:`TokenManager.get_token`."""
        hit = self._fresh.get(key)
        if hit is not None and self._monotonic() < hit[0]:
            self._hits += 1
            return hit[1]
        return await self._get_slow(key)

    def _peek_fresh(self, key: str) -> Token | None:
        hit = self._fresh.get(key)
        if hit is not None and self._monotonic() < hit[0]:
            self._hits += 1
            return hit[1]
        return None
