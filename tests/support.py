"""Helpers shared by the manager's test modules (imported by name: tests/ is not a package)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from asynctoken import KeliwebProvider, RetryPolicy, Token
from asynctoken.testing import FakeOAuthServer

#: Retries fast enough for tests, still bounded by attempts.
FAST_RETRY = RetryPolicy(attempts=4, deadline=10.0, initial_delay=0.01, max_delay=0.02)


def keliweb(server: FakeOAuthServer, **kwargs: Any) -> KeliwebProvider:
    """A Keliweb provider pointed at ``server``."""
    return KeliwebProvider(
        client_id=server.client_id,
        client_secret=server.client_secret,
        token_url=server.token_url,
        **kwargs,
    )


async def collect(keys: AsyncIterator[str]) -> list[str]:
    """Every key of an iteration (``[k async for k in store.keys()]``)."""
    return [key async for key in keys]


def token(n: int, refresh: str | None = None) -> Token:
    """A distinct, recognisable token for store tests."""
    return Token(
        access_token=f"access-{n}",
        expires_at=1_700_000_000.0 + n,
        refresh_token=refresh or f"refresh-{n}",
        extra={"n": n},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def app_with(route: str, handler: Handler, method: str = "*") -> web.Application:
    """An aiohttp app with one route."""
    app = web.Application()
    app.router.add_route(method, route, handler)
    return app


def bearer(request: web.Request) -> str | None:
    """The bearer token a request carried, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" and token else None


def invalid_token() -> web.Response:
    """A resource server's answer to a rejected token (RFC 6750)."""
    return web.json_response(
        {"error": "invalid_token"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
