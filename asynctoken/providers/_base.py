"""The :class:`Provider` protocol: how the manager talks to a token endpoint."""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import aiohttp

from .._token import Token

__all__ = ["Provider", "takes_current"]


@runtime_checkable
class Provider(Protocol):
    """One OAuth2 client registration at one token endpoint.

    A provider makes exactly one HTTP request per call and maps the answer to a :class:`Token`
    or to a typed error; retries, backoff, single flight, rotation bookkeeping and storage are the
    manager's job. Providers never touch stores.

    Attributes:
        name: short provider name (``"keliweb"``, ``"erpeasy"``, ``"oauth2"``).
        token_url: the token endpoint URL.
    """

    name: str
    token_url: str

    @property
    def can_reauthenticate(self) -> bool:
        """Whether :meth:`fetch_token` can get a token without a refresh token (a password or
        client-credentials grant is configured)."""
        ...

    async def fetch_token(
        self, session: aiohttp.ClientSession, *, refresh_token: str | None, issued_at: float
    ) -> Token:
        """Make one token request.

        Args:
            session: the session to send it with (no middlewares, no shared cookie jar).
            refresh_token: use the refresh-token grant with this token; ``None`` means use the
                provider's primary grant (password or client credentials).
            issued_at: unix epoch seconds at which the request is sent; ``expires_at`` of the
                returned token is ``issued_at + expires_in``.

        A provider that keeps state with the credential (``OAuth2Provider`` keeps its DPoP key
        on the token) may also take a keyword argument ``current: Token | None``: the manager
        then passes the stored token (``None`` if there is none). Providers without it are
        called as above.

        Returns:
            The new token. Its ``refresh_token`` is ``None`` when the answer carried none (the
            manager then keeps the old one).

        Raises:
            InvalidGrantError: the refresh token or password is dead, or ``refresh_token`` is
                ``None`` and no primary grant is configured.
            InvalidClientError: the client credentials were rejected.
            TokenEndpointError: another final error answer (other 4xx).
            TransientError: 5xx, 408, 429, ``temporarily_unavailable``, a network error or a
                timeout (one attempt; ``retry_after`` set from the answer).
            MalformedResponseError: the answer was not a usable token response.
        """
        ...


_TAKES_CURRENT: dict[type, bool] = {}


def takes_current(provider: object) -> bool:
    """Whether ``provider.fetch_token`` accepts the ``current`` keyword (checked once per class)."""
    cls = type(provider)
    known = _TAKES_CURRENT.get(cls)
    if known is None:
        try:
            parameters = inspect.signature(cls.fetch_token).parameters  # type: ignore[attr-defined]
        except (AttributeError, TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        known = _TAKES_CURRENT[cls] = "current" in parameters
    return known
