"""How token endpoints are reached: which provider renews which credential (registered, or
resolved by a factory), and the HTTP session token requests go through."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import aiohttp
import cachetools

from ._errors import ConfigurationError, CredentialNotFoundError, TokenError
from .providers._base import Provider

__all__ = ["ProviderFactory", "ProviderRegistry", "TokenSession"]

ProviderFactory = Callable[[str], "Provider | Awaitable[Provider | None] | None"]
"""Resolves the provider for a key that was not registered with :meth:`TokenManager.add`."""


class ProviderRegistry:
    """Providers by credential key: registered with :meth:`register`, else resolved by the
    factory (and cached, bounded by ``size``).

    Args:
        factory: returns the provider of an unregistered key, an awaitable of it, or ``None``.
        size: how many resolved providers are kept.
    """

    __slots__ = ("_checked_types", "_factory", "_registered", "_resolved")

    def __init__(self, factory: ProviderFactory | None, size: int) -> None:
        self._factory = factory
        self._registered: dict[str, Provider] = {}
        self._resolved: cachetools.LRUCache[str, Provider] = cachetools.LRUCache(size)
        self._checked_types: set[type] = set()

    def __len__(self) -> int:
        """How many providers were registered."""
        return len(self._registered)

    def register(self, key: str, provider: Provider) -> None:
        """Use ``provider`` for ``key`` from now on."""
        self._registered[key] = provider
        self._resolved.pop(key, None)

    def unregister(self, key: str) -> None:
        """Forget ``key``'s provider (a factory may resolve it again)."""
        self._registered.pop(key, None)
        self._resolved.pop(key, None)

    def known(self, key: str) -> Provider | None:
        """``key``'s provider if it was registered or resolved already, without resolving."""
        return self._registered.get(key) or self._resolved.get(key)

    async def resolve(self, key: str) -> Provider:
        """``key``'s provider.

        Raises:
            CredentialNotFoundError: none is registered and the factory has none.
            ConfigurationError: the factory returned something that is not a provider.
        """
        provider = self._registered.get(key) or self._resolved.get(key)
        if provider is not None:
            return provider
        if self._factory is not None:
            result = self._factory(key)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                # A runtime Protocol check costs microseconds: do it once per provider class.
                if type(result) not in self._checked_types:
                    if not isinstance(result, Provider):
                        raise ConfigurationError(
                            f"provider_factory returned {type(result).__name__}, not a Provider",
                            key=key,
                        )
                    self._checked_types.add(type(result))
                self._resolved[key] = result
                return result
        raise CredentialNotFoundError(
            "no provider registered for this key: call add(key, provider, ...) or pass a "
            "provider_factory",
            key=key,
        )


class TokenSession:
    """The :class:`aiohttp.ClientSession` token requests go through, created on first use.

    It has a cookie jar of its own and no middlewares, whatever the user's session has: a
    refresh token cookie must never land in a shared jar, and a token request must never pass
    through the auth middleware that is waiting for it. Given the user's session, it shares
    that session's connection pool.

    Args:
        shared: the user's session (``TokenManager(session=...)``), or ``None``.
    """

    __slots__ = ("_shared", "current")

    def __init__(self, shared: aiohttp.ClientSession | None) -> None:
        self._shared = shared
        self.current: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        """The session to send a token request with.

        Raises:
            TokenError: the user's session is closed.
        """
        shared = self._shared
        if shared is not None and shared.closed:
            raise TokenError(
                "the aiohttp.ClientSession given to TokenManager(session=...) is closed; close "
                "the manager before the session"
            )
        session = self.current
        if session is None or session.closed:
            if shared is not None:
                session = aiohttp.ClientSession(
                    connector=shared.connector,
                    connector_owner=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    trust_env=shared.trust_env,
                )
            else:
                session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
            self.current = session
        return session

    async def aclose(self) -> None:
        """Close the session this created (never the user's)."""
        if self.current is not None:
            await self.current.close()
