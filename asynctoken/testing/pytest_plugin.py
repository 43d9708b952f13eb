"""pytest fixtures for asynctoken's fake OAuth server (loaded automatically by pytest).

Fixtures (async, function-scoped, need pytest-asyncio):

- ``fake_oauth_server``: a factory; ``server = await fake_oauth_server("erpeasy", expires_in=60)``
  builds and starts a :class:`~asynctoken.testing.FakeOAuthServer`; every server it made is
  closed at teardown.
- ``keliweb_server``, ``erpeasy_server``, ``oauth2_server``: a started server with defaults.

Example::

    async def test_reuse_is_detected(keliweb_server):
        refresh_token = keliweb_server.issue_refresh_token()
        ...  # refresh twice with refresh_token
        assert keliweb_server.reuse_detected == 1
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import FakeOAuthServer, FakeOAuthServerFactory, Flavor

__all__ = ["erpeasy_server", "fake_oauth_server", "keliweb_server", "oauth2_server"]

# Without pytest-asyncio the fixtures are simply not defined: a plugin that failed to import would
# break every pytest run in an environment where asynctoken is installed.
if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def fake_oauth_server() -> AsyncIterator[FakeOAuthServerFactory]:
        """A factory of started fake OAuth servers, all closed at teardown.

        Yields:
            ``async (flavor="keliweb", **kwargs) -> FakeOAuthServer``; ``kwargs`` are those of
            :class:`~asynctoken.testing.FakeOAuthServer`.
        """
        from . import FakeOAuthServer

        servers: list[FakeOAuthServer] = []

        async def factory(flavor: Flavor = "keliweb", **kwargs: Any) -> FakeOAuthServer:
            server = FakeOAuthServer(flavor, **kwargs)
            servers.append(server)
            return await server.start()

        try:
            yield factory
        finally:
            for server in reversed(servers):
                await server.close()

    @pytest_asyncio.fixture
    async def keliweb_server(fake_oauth_server: FakeOAuthServerFactory) -> FakeOAuthServer:
        """A started ``FakeOAuthServer("keliweb")`` with default settings."""
        return await fake_oauth_server("keliweb")

    @pytest_asyncio.fixture
    async def erpeasy_server(fake_oauth_server: FakeOAuthServerFactory) -> FakeOAuthServer:
        """A started ``FakeOAuthServer("erpeasy")`` with default settings."""
        return await fake_oauth_server("erpeasy")

    @pytest_asyncio.fixture
    async def oauth2_server(fake_oauth_server: FakeOAuthServerFactory) -> FakeOAuthServer:
        """A started ``FakeOAuthServer("oauth2")`` with default settings."""
        return await fake_oauth_server("oauth2")
