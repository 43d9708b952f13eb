"""A FastAPI service that calls an OAuth2-protected upstream API through httpx, with asynctoken.

One ``TokenManager`` and one ``httpx.AsyncClient`` (with ``TokenAuth``) per worker process,
created in the lifespan (inside the worker's event loop) and handed to the endpoints with a
dependency; every process of the service uses the same store, so that one token request per
expiry is made among all of them, and a rotated refresh token is never used twice.

Needs ``pip install 'asynctoken[httpx]' fastapi uvicorn``.

Configuration (environment):
    UPSTREAM_API_URL   the upstream API endpoint this gateway calls (``GET /invoices`` here)
    TOKEN_URL          the upstream's OAuth2 token endpoint
    CLIENT_ID, CLIENT_SECRET
    REFRESH_TOKEN      seed refresh token, used only while the store holds nothing yet
    TOKEN_STORE        a JSON file path (one host) or a ``redis://`` URL (several hosts);
                       default ``tokens.json``

Run several worker processes::

    uvicorn fastapi_gateway:app --app-dir examples --workers 4 --port 8080
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

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
from asynctoken.httpx import TokenAuth

KEY = "upstream"

logger = logging.getLogger("gateway")


def token_store() -> TokenStore:
    """The store every worker process shares: a file on one host, Redis across hosts."""
    location = os.environ.get("TOKEN_STORE", "tokens.json")
    if location.startswith(("redis://", "rediss://")):
        from asynctoken import RedisStore  # pip install 'asynctoken[redis]'

        return RedisStore(location, prefix="gateway:")
    return FileStore(location)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The manager and the upstream client live as long as the worker's app."""
    provider = OAuth2Provider(
        token_url=os.environ["TOKEN_URL"],
        client_id=os.environ["CLIENT_ID"],
        client_secret=os.environ["CLIENT_SECRET"],
    )
    url = os.environ["UPSTREAM_API_URL"]
    async with TokenManager(store=token_store()) as tm:
        # Seeds the store only if it holds nothing yet (another worker may have done it).
        await tm.add(KEY, provider, refresh_token=os.environ.get("REFRESH_TOKEN"))
        auth = TokenAuth(tm, KEY, origins=[url])
        async with httpx.AsyncClient(auth=auth, timeout=10) as client:
            # Lifespan state: a shallow copy reaches every request as ``request.state``.
            yield {"upstream": client, "upstream_url": url}
    # Leaving the ``async with`` closes the client, then the manager: a refresh in flight
    # finishes and its rotated refresh token is saved before the worker exits.


app = FastAPI(lifespan=lifespan)


def upstream_client(request: Request) -> httpx.AsyncClient:
    """Dependency: the worker's upstream client."""
    client: httpx.AsyncClient = request.state.upstream
    return client


Upstream = Annotated[httpx.AsyncClient, Depends(upstream_client)]


@app.get("/invoices")
async def invoices(request: Request, upstream: Upstream) -> JSONResponse:
    """The upstream's answer, authorized with the shared credential."""
    response = await upstream.get(request.state.upstream_url)
    return JSONResponse(response.json(), status_code=response.status_code)


# asynctoken's errors are TokenErrors, not httpx.HTTPErrors: map both. Starlette picks the
# handler of the nearest class in the exception's MRO, so the specific ones win over TokenError.
@app.exception_handler(ConfigurationError)
@app.exception_handler(CredentialNotFoundError)
async def misconfigured(_: Request, exc: Exception) -> JSONResponse:
    """A bug in this service (wrong key, insecure upstream URL): a plain 500."""
    logger.error("gateway misconfigured: %s", exc)
    return error(500, "gateway_misconfigured", exc)


@app.exception_handler(TransientError)
@app.exception_handler(StoreError)
async def token_unavailable(_: Request, exc: Exception) -> JSONResponse:
    """The token endpoint or the store is down for now: the client may try again later."""
    logger.warning("no upstream token right now: %s", exc)
    return error(503, "upstream_unavailable", exc, headers={"Retry-After": "5"})


@app.exception_handler(TokenError)
async def token_refused(_: Request, exc: Exception) -> JSONResponse:
    """The credential was refused (InvalidGrantError: re-authorize; InvalidClientError: check
    the client secret) or the token endpoint answered nonsense: an operator must act."""
    logger.error("upstream credential unusable: %s", exc)
    return error(502, "upstream_credential", exc)


@app.exception_handler(httpx.TimeoutException)
async def upstream_timeout(_: Request, exc: Exception) -> JSONResponse:
    return error(504, "upstream_timeout", exc)


@app.exception_handler(httpx.HTTPError)
async def upstream_unreachable(_: Request, exc: Exception) -> JSONResponse:
    return error(502, "upstream_unreachable", exc)


def error(
    status: int, code: str, exc: Exception, headers: dict[str, str] | None = None
) -> JSONResponse:
    # TokenError messages never contain a secret; still, say only what kind of failure it was.
    body = {"error": code, "detail": type(exc).__name__}
    return JSONResponse(body, status_code=status, headers=headers)
