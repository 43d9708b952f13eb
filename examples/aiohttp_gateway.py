"""An aiohttp web service that calls an OAuth2-protected upstream API, with asynctoken.

One ``TokenManager`` per worker process, created in the app's ``cleanup_ctx`` (so it is made
inside the worker's event loop, after any fork) and shared by every request through the app;
every process of the service uses the same store, so that one token request per expiry is made
among all of them, and a rotated refresh token is never used twice.

Configuration (environment):
    UPSTREAM_API_URL   the upstream API endpoint this gateway calls (``GET /invoices`` here)
    TOKEN_URL          the upstream's OAuth2 token endpoint
    CLIENT_ID, CLIENT_SECRET
    REFRESH_TOKEN      seed refresh token, used only while the store holds nothing yet
    TOKEN_STORE        a JSON file path (one host) or a ``redis://`` URL (several hosts);
                       default ``tokens.json``

Run one process::

    python examples/aiohttp_gateway.py --port 8080

Run several worker processes with gunicorn (``--preload`` is fine: the manager is created in
each worker, never in the master)::

    gunicorn aiohttp_gateway:create_app --chdir examples \\
        --worker-class aiohttp.GunicornWebWorker --workers 4 --bind 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from asynctoken import (
    ConfigurationError,
    CredentialNotFoundError,
    FileStore,
    OAuth2Provider,
    StoreError,
    TokenError,
    TokenManager,
    TokenStore,
    TransientError,
)

KEY = "upstream"
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
UPSTREAM_URL = web.AppKey("upstream_url", str)

logger = logging.getLogger("gateway")


def token_store() -> TokenStore:
    """The store every worker process shares: a file on one host, Redis across hosts."""
    location = os.environ.get("TOKEN_STORE", "tokens.json")
    if location.startswith(("redis://", "rediss://")):
        from asynctoken import RedisStore  # pip install 'asynctoken[redis]'

        return RedisStore(location, prefix="gateway:")
    return FileStore(location)


async def upstream_client(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the manager and the upstream session live as long as the app."""
    provider = OAuth2Provider(
        token_url=os.environ["TOKEN_URL"],
        client_id=os.environ["CLIENT_ID"],
        client_secret=os.environ["CLIENT_SECRET"],
    )
    url = os.environ["UPSTREAM_API_URL"]
    async with TokenManager(store=token_store()) as tm:
        # Seeds the store only if it holds nothing yet (another worker may have done it).
        await tm.add(KEY, provider, refresh_token=os.environ.get("REFRESH_TOKEN"))
        async with aiohttp.ClientSession(
            middlewares=[tm.middleware(KEY, origins=[url])],
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            app[UPSTREAM] = session
            app[UPSTREAM_URL] = url
            yield
    # Leaving the ``async with`` closes the session, then the manager: a refresh in flight
    # finishes and its rotated refresh token is saved before the worker exits.


async def invoices(request: web.Request) -> web.Response:
    """``GET /invoices``: the upstream's answer, authorized with the shared credential."""
    session = request.app[UPSTREAM]
    async with session.get(request.app[UPSTREAM_URL]) as upstream:
        body = await upstream.json(content_type=None)
        return web.json_response(body, status=upstream.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def upstream_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map what a call to the upstream can raise to a gateway answer.

    asynctoken's errors are ``TokenError``s, not ``aiohttp.ClientError``s: catch both.
    """
    try:
        return await handler(request)
    except (ConfigurationError, CredentialNotFoundError):
        raise  # a bug in this service: a plain 500
    except (TransientError, StoreError) as exc:
        # The token endpoint or the store is down for now: the client may try again later.
        logger.warning("no upstream token right now: %s", exc)
        return error(503, "upstream_unavailable", exc, headers={"Retry-After": "5"})
    except TokenError as exc:
        # The credential was refused (InvalidGrantError: re-authorize; InvalidClientError:
        # check the client secret) or the token endpoint answered nonsense: an operator must act.
        logger.error("upstream credential unusable: %s", exc)
        return error(502, "upstream_credential", exc)
    except asyncio.TimeoutError as exc:
        return error(504, "upstream_timeout", exc)
    except aiohttp.ClientError as exc:
        return error(502, "upstream_unreachable", exc)


def error(
    status: int, code: str, exc: BaseException, headers: dict[str, str] | None = None
) -> web.Response:
    # TokenError messages never contain a secret; still, say only what kind of failure it was.
    body = {"error": code, "detail": type(exc).__name__}
    return web.json_response(body, status=status, headers=headers)


async def create_app() -> web.Application:
    """The application factory (gunicorn's aiohttp worker awaits it inside each worker)."""
    app = web.Application(middlewares=[upstream_errors])
    app.cleanup_ctx.append(upstream_client)
    app.router.add_get("/invoices", invoices)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    web.run_app(create_app(), host=options.host, port=options.port)
