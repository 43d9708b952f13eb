"""The aiohttp client middleware: :class:`TokenMiddleware`.

One awaited :meth:`TokenManager.get_token` and one header per request; a rejected token (HTTP 401)
is invalidated and the request retried once with the next token. The refresh itself is the
manager's single flight, so any number of requests rejected together cause one token request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import hdrs, payload
from yarl import URL

from ._authflow import AuthRules, Verdict, token_for_retry, warn_not_replayable
from ._token import Token

if TYPE_CHECKING:
    from aiohttp.client_middlewares import ClientHandlerType

    from ._manager import TokenManager

__all__ = ["TokenMiddleware"]

# Reading a small 401 body lets its connection go back to the pool instead of being closed.
_DRAIN_LIMIT: Final = 64 * 1024


class TokenMiddleware:
    """aiohttp client middleware that sends ``key``'s access token and renews it on HTTP 401.

    Create it with :meth:`TokenManager.middleware` and install it on a session (aiohttp >= 3.12)::

        import asyncio
        import os

        import aiohttp
        from asynctoken import FileStore, KeliwebProvider, TokenManager


        async def main() -> None:
            provider = KeliwebProvider(
                client_id=os.environ["KELIWEB_CLIENT_ID"],
                client_secret=os.environ["KELIWEB_CLIENT_SECRET"],
            )
            async with TokenManager(store=FileStore("tokens.json")) as tm:
                await tm.add("keliweb", provider, refresh_token=os.environ["KELIWEB_REFRESH_TOKEN"])
                async with aiohttp.ClientSession(
                    "https://fatture.keliweb.it", middlewares=[tm.middleware("keliweb")]
                ) as session:
                    async with session.get("/api/invoices") as resp:
                        print(resp.status, await resp.json())


        asyncio.run(main())

    For every request it awaits :meth:`TokenManager.get_token` (a dict lookup while the cached
    token is fresh) and sets ``Authorization``. When the response is a 401 that a new token can
    fix, it calls :meth:`TokenManager.invalidate` with exactly the token this request sent (a
    newer token obtained meanwhile by another request is kept) and gets a token again (many
    requests rejected at once share one refresh); only if that is another token does it release
    the 401 and send the request once more. It never retries twice: a 401 to the retried request
    is returned to the caller as is, and so is a 401 that is not retried (the manager kept the
    token because it had just replaced a rejected one, or the body cannot be sent again), with
    its body still readable.

    Which 401s are retried:

    * ``WWW-Authenticate: Bearer error="invalid_token"``: always (RFC 6750).
    * A 401 with a Bearer challenge naming another error (e.g. ``insufficient_scope``): never; a
      new token would be rejected the same way.
    * A 401 with no Bearer error at all (many APIs, Laravel's ``{"message":"Unauthenticated."}``
      among them, send no challenge): retried unless ``require_invalid_token=True``.
    * For a DPoP-bound token (:attr:`Token.dpop_key`, sent as ``Authorization: DPoP`` with a new
      proof per request): ``DPoP error="use_dpop_nonce"`` is retried once with the same token
      and the ``DPoP-Nonce`` the server sent (remembered for later requests to that origin),
      and the answer to that is judged by these rules again; ``DPoP error="invalid_token"`` as
      above; other DPoP errors never.

    A 401 is returned without a retry, and a warning logged, when the request body cannot be
    sent twice: an async generator, a stream or an unseekable file that the first attempt
    consumed (aiohttp marks such payloads ``consumed``). The rejected token is still invalidated,
    so the caller's own retry gets a new one. Bytes, strings, JSON, forms and seekable files are
    replayed; to have uploads retried, pass them as bytes or a seekable file.

    The token is only sent to ``origins``; by default to the origin (scheme, host, port) of the
    first request the middleware sees, as aiohttp's ``DigestAuthMiddleware`` does. Requests to
    any other origin, including redirects to one, pass through untouched, so a redirect cannot
    carry the token to another host. Pass ``origins`` explicitly when one session talks to
    several hosts of the same API.

    A bearer token is never sent in clear text to another machine: an ``http://`` origin whose
    host is not loopback (``localhost``, 127.0.0.0/8, ``::1``) is refused with
    :class:`~asynctoken.ConfigurationError` (when ``origins`` are given, at construction; else
    for the first request, before anything is sent), unless ``allow_insecure_http=True``.

    Token requests made by the manager never pass through this middleware, even when the manager
    was given the session the middleware is installed on: the manager sends them on its own
    session without middlewares.

    Args:
        manager: the manager that owns the credential.
        key: the credential's key in the manager.
        origins: URLs (only scheme, host and port count) the token may be sent to; ``None`` pins
            it to the first request's origin.
        require_invalid_token: retry only 401s that carry ``Bearer error="invalid_token"``.
        allow_insecure_http: send the token over plain ``http://`` to hosts that are not
            loopback too (the token can then be read by anyone on the network path).

    Raises:
        ConfigurationError: ``key`` is empty, an origin is not an absolute URL, or an origin is
            plain ``http://`` to a non-loopback host without ``allow_insecure_http``. Also
            raised by a request to such an origin when it would be the first request's origin.
    """

    __slots__ = ("_manager", "_rules")

    def __init__(
        self,
        manager: TokenManager,
        key: str,
        *,
        origins: Iterable[str | URL] | None = None,
        require_invalid_token: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        self._rules = AuthRules(
            key,
            origins=origins,
            require_invalid_token=require_invalid_token,
            allow_insecure_http=allow_insecure_http,
        )
        self._manager = manager

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """Authorize ``request``, send it, and retry it once if the token was rejected.

        Raises:
            TokenError: no token could be had for the key (the manager's errors, e.g.
                :class:`~asynctoken.InvalidGrantError`), before or after a 401.
            ConfigurationError: the request would pin the token to a plain ``http://`` origin
                that is not loopback, and ``allow_insecure_http`` is off. Nothing was sent.
        """
        rules = self._rules
        url = request.url
        if not rules.covers(url.scheme, url.raw_host, url.port):
            return await handler(request)
        token = await self._manager.get_token(rules.key)
        request.headers.update(rules.headers(token, request.method, url))
        response = await handler(request)
        if response.status != 401:
            if token.dpop_key is not None:  # a DPoP server may hand out its next nonce anytime
                rules.observe_nonce(url, response.headers.get("DPoP-Nonce"))
            return response
        return await self._retry(request, handler, response, token, nonce_retry=True)

    async def _retry(
        self,
        request: aiohttp.ClientRequest,
        handler: ClientHandlerType,
        response: aiohttp.ClientResponse,
        token: Token,
        *,
        nonce_retry: bool,
    ) -> aiohttp.ClientResponse:
        """The 401 path: invalidate the token this request sent and send it once more.

        A DPoP resource server's ``use_dpop_nonce`` is answered first, once, with the same token
        and its nonce; a 401 to that is judged like any other. Nothing is released before a
        retry is certain: a 401 that is not retried reaches the caller untouched, its body still
        readable.
        """
        rules = self._rules
        verdict = rules.verdict(
            response.headers.getall(hdrs.WWW_AUTHENTICATE, ()),
            dpop_nonce=response.headers.get("DPoP-Nonce"),
            url=request.url,
        )
        if verdict is Verdict.KEEP or (verdict is Verdict.NONCE and not nonce_retry):
            return response
        try:
            fresh = await token_for_retry(
                self._manager,
                rules,
                token,
                replayable=_replayable(request.body),
                method=request.method,
                url=request.url,
                body=type(request.body).__name__,
                verdict=verdict,
            )
        except BaseException:
            response.release()
            raise
        if fresh is None:
            return response
        await _drain(response)
        # Checked again right before the release: the body writer may have got further while
        # the manager and the drain were awaited. From here to the release nothing awaits.
        if not _replayable(request.body):
            warn_not_replayable(rules, request.method, request.url, type(request.body).__name__)
            return response
        response.release()
        # Let the cancelled body writer settle before the body is written again.
        await response.wait_for_close()
        request.headers.update(rules.headers(fresh, request.method, request.url))
        if verdict is not Verdict.NONCE:
            return await handler(request)
        response = await handler(request)
        if response.status != 401:
            return response
        return await self._retry(request, handler, response, fresh, nonce_retry=False)

    def __repr__(self) -> str:
        return f"TokenMiddleware({self._rules.describe()})"


def _replayable(body: object) -> bool:
    """Whether a request body can be sent again after a first attempt."""
    if not isinstance(body, payload.Payload):
        return True  # no body
    consumed = getattr(body, "consumed", None)
    if consumed is None:  # aiohttp 3.12.0: no reusable payloads yet, only bytes are safe
        return isinstance(body, payload.BytesPayload)
    return not consumed


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a small body of a response about to be released, so its connection can be reused.

    The body stays readable: if the response is returned after all, the caller reads it from
    the buffer.
    """
    length = response.content_length
    if length is not None and length <= _DRAIN_LIMIT:
        # On failure the connection is closed on release; the retry opens a new one.
        with contextlib.suppress(aiohttp.ClientError):
            await response.read()
