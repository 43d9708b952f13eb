"""httpx authentication with a credential's token: :class:`TokenAuth`.

Needs the ``httpx`` extra: ``pip install 'asynctoken[httpx]'``.

The same rules as the aiohttp :class:`~asynctoken.TokenMiddleware`, from the same place
(``asynctoken._authflow``): the token goes only to its origins, never over plain http to another
machine, and a 401 that a new token can fix is retried once with the next token.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("asynctoken.httpx needs httpx: pip install 'asynctoken[httpx]'") from exc

from ._authflow import AuthRules, SyncManager, Verdict, token_for_retry, token_for_retry_sync
from ._errors import ConfigurationError
from ._token import Token

if TYPE_CHECKING:
    from ._manager import TokenManager

__all__ = ["TokenAuth"]


class _Retry:
    """A flow step: the token to send ``token``'s request again with (``token_for_retry``)."""

    __slots__ = ("options", "token")

    def __init__(self, token: Token, options: dict[str, Any]) -> None:
        self.token = token
        self.options = options


#: A flow step: the key's token (``get_token``).
_TOKEN: Final = object()


class TokenAuth(httpx.Auth):
    """``httpx.Auth`` that sends ``key``'s access token and renews it on HTTP 401.

    With an asyncio :class:`~asynctoken.TokenManager`, for ``httpx.AsyncClient``::

        import httpx
        from asynctoken import FileStore, KeliwebProvider, TokenManager
        from asynctoken.httpx import TokenAuth

        async with TokenManager(store=FileStore("tokens.json")) as tm:
            await tm.add("keliweb", KeliwebProvider(client_id=ID, client_secret=SECRET),
                         refresh_token=REFRESH_TOKEN)
            async with httpx.AsyncClient(
                base_url="https://fatture.keliweb.it", auth=TokenAuth(tm, "keliweb")
            ) as client:
                invoices = (await client.get("/api/invoices")).json()

    With a synchronous manager (``asynctoken.sync.SyncTokenManager``: anything whose
    ``get_token(key)`` and ``token_rejected(key, token)`` are plain methods), for
    ``httpx.Client``. Using it with the other kind of client raises
    :class:`~asynctoken.ConfigurationError` on the first request, before anything is sent.

    Every request gets ``Authorization`` from ``get_token`` (with a cached token, a dict
    lookup). On a 401 that a new token can fix, exactly the token this request sent is
    invalidated (a newer one another request got meanwhile is kept, so many requests rejected
    together cause one refresh) and the request is sent once more with the next token; never a
    third time. A 401 that is not retried is returned as httpx received it, its body readable
    (with ``client.stream(...)`` still unread).

    Which 401s are retried: ``WWW-Authenticate: Bearer error="invalid_token"``; a 401 without a
    Bearer error (Laravel answers so) unless ``require_invalid_token=True``; never another
    Bearer error such as ``insufficient_scope``.

    Bodies: ``content=`` bytes or str, ``json=``, ``data=`` forms and ``files=`` whose files are
    bytes or seekable are sent again. A streamed body (an iterator, an async iterator, a file
    object passed as ``content=``) is sent once: a 401 to it is returned with a warning logged,
    and the rejected token is dropped so the next request gets a new one. Bodies are never
    buffered by this auth (``requires_request_body`` is false), so streamed uploads stay
    streamed; to have an upload retried, pass it as bytes or as a seekable file in ``files=``.

    Origins: the token goes only to ``origins``, by default to the origin (scheme, host, port)
    of the first request. Requests to other origins pass through untouched; httpx itself drops
    ``Authorization`` on a redirect to another origin. An ``http://`` origin whose host is not
    loopback is refused with :class:`~asynctoken.ConfigurationError` (for ``origins``, at
    construction; else on the first request, before anything is sent), unless
    ``allow_insecure_http=True``.

    Token requests are made by the manager on its own aiohttp session: they never pass through
    this auth or the client it is installed on.

    Errors: a request can raise the manager's :class:`~asynctoken.TokenError` subclasses
    (:class:`~asynctoken.InvalidGrantError`, :class:`~asynctoken.TransientError`, ...), which
    are not ``httpx.HTTPError``: catch both in a gateway (see the documentation, "Web servers
    and workers", docs/how-to/web-servers.md).

    Args:
        manager: a :class:`~asynctoken.TokenManager`, or a synchronous manager for
            ``httpx.Client``.
        key: the credential's key in the manager.
        origins: URLs (only scheme, host and port count) the token may be sent to; ``None`` pins
            it to the first request's origin.
        require_invalid_token: retry only 401s that carry ``Bearer error="invalid_token"``.
        allow_insecure_http: send the token over plain ``http://`` to hosts that are not
            loopback too.

    Raises:
        ConfigurationError: ``manager`` is not a token manager, ``key`` is empty, an origin is
            not an absolute URL, or an origin is plain ``http://`` to a non-loopback host
            without ``allow_insecure_http``.
    """

    requires_request_body = False
    requires_response_body = False

    __slots__ = ("_is_async", "_manager", "_rules")

    def __init__(
        self,
        manager: TokenManager | SyncManager,
        key: str,
        *,
        origins: Iterable[str | httpx.URL] | None = None,
        require_invalid_token: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        get_token = getattr(manager, "get_token", None)
        is_async = inspect.iscoroutinefunction(get_token)
        if not is_async and not (
            callable(get_token) and callable(getattr(manager, "token_rejected", None))
        ):
            raise ConfigurationError(
                "manager must be an asynctoken TokenManager (httpx.AsyncClient) or "
                f"SyncTokenManager (httpx.Client), got {type(manager).__name__}"
            )
        self._rules = AuthRules(
            key,
            origins=origins,
            require_invalid_token=require_invalid_token,
            allow_insecure_http=allow_insecure_http,
        )
        self._manager = manager
        self._is_async = is_async

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow ``httpx.AsyncClient`` runs: authorize, send, retry once on a rejected token.

        Raises:
            TokenError: no token could be had for the key, before or after a 401.
            ConfigurationError: the manager is synchronous, or the request would pin the token
                to a plain ``http://`` origin that is not loopback. Nothing was sent.
        """
        if not self._is_async:
            raise ConfigurationError(
                f"TokenAuth for {self._rules.key!r} holds a synchronous manager "
                f"({type(self._manager).__name__}) and is used by httpx.AsyncClient: give it "
                "an asyncio TokenManager, or use it with httpx.Client",
                key=self._rules.key,
            )
        manager = cast("TokenManager", self._manager)
        flow = self._flow(request)
        step = next(flow)
        while True:
            if isinstance(step, httpx.Request):
                reply: object = yield step
            elif isinstance(step, _Retry):
                reply = await token_for_retry(manager, self._rules, step.token, **step.options)
            else:
                reply = await manager.get_token(self._rules.key)
            try:
                step = flow.send(reply)
            except StopIteration:
                return

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """The flow ``httpx.Client`` runs: authorize, send, retry once on a rejected token.

        Raises:
            TokenError: no token could be had for the key, before or after a 401.
            ConfigurationError: the manager is an asyncio one, or the request would pin the
                token to a plain ``http://`` origin that is not loopback. Nothing was sent.
        """
        if self._is_async:
            raise ConfigurationError(
                f"TokenAuth for {self._rules.key!r} holds an asyncio TokenManager and is used "
                "by httpx.Client: use httpx.AsyncClient, or give it a SyncTokenManager "
                "(asynctoken.sync) for synchronous code",
                key=self._rules.key,
            )
        manager = cast("SyncManager", self._manager)
        flow = self._flow(request)
        step = next(flow)
        while True:
            if isinstance(step, httpx.Request):
                reply: object = yield step
            elif isinstance(step, _Retry):
                reply = token_for_retry_sync(manager, self._rules, step.token, **step.options)
            else:
                reply = manager.get_token(self._rules.key)
            try:
                step = flow.send(reply)
            except StopIteration:
                return

    def _flow(self, request: httpx.Request) -> Generator[object, object]:
        """The flow itself, without I/O: it yields a request to send (and receives the
        response), :data:`_TOKEN` for the key's token, or a :class:`_Retry` for the token to
        send again with (or ``None``); the async and sync drivers above do those."""
        rules = self._rules
        url = request.url
        if not rules.covers(url.scheme, url.raw_host.decode("ascii"), url.port):
            yield request
            return
        token = cast(Token, (yield _TOKEN))
        _authorize(request, rules.headers(token, request.method, url))
        response = cast(httpx.Response, (yield request))
        verdict = self._verdict(response, token, nonce_retry=True)
        options = {
            "replayable": _replayable(request),
            "method": request.method,
            "url": url,
            "body": type(request.stream).__name__,
        }
        if verdict is Verdict.NONCE:  # a DPoP resource server wants its nonce in the proof
            again = cast("Token | None", (yield _Retry(token, {**options, "verdict": verdict})))
            if again is None:
                return
            _authorize(request, rules.headers(again, request.method, url))
            response = cast(httpx.Response, (yield request))
            verdict = self._verdict(response, token, nonce_retry=False)
        if verdict is not Verdict.NEW_TOKEN:
            return
        options["replayable"] = _replayable(request)
        fresh = cast("Token | None", (yield _Retry(token, options)))
        if fresh is not None:
            _authorize(request, rules.headers(fresh, request.method, url))
            yield request

    def _verdict(self, response: httpx.Response, token: Token, *, nonce_retry: bool) -> Verdict:
        """What the answer calls for: :attr:`Verdict.NEW_TOKEN` for a 401 from an origin the
        token went to that another token can fix; :attr:`Verdict.NONCE` (only when
        ``nonce_retry``) for a DPoP resource server's ``use_dpop_nonce``; else KEEP."""
        # After redirects, the answer may come from an origin that never saw the token.
        url = response.request.url
        if not self._rules.covers(url.scheme, url.raw_host.decode("ascii"), url.port):
            return Verdict.KEEP
        nonce = response.headers.get("dpop-nonce")
        if response.status_code != 401:
            if token.dpop_key is not None:  # a DPoP server may hand out its next nonce anytime
                self._rules.observe_nonce(url, nonce)
            return Verdict.KEEP
        challenges = response.headers.get_list("www-authenticate")
        verdict = self._rules.verdict(challenges, dpop_nonce=nonce, url=url)
        if verdict is Verdict.NONCE and not nonce_retry:
            return Verdict.KEEP
        return verdict

    def __repr__(self) -> str:
        kind = "" if self._is_async else ", sync"
        return f"TokenAuth({self._rules.describe()}{kind})"


def _authorize(request: httpx.Request, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.headers[name] = value


def _replayable(request: httpx.Request) -> bool:
    """Whether httpx can send this request's body again (what the first attempt read is gone).

    Only bodies known to be rewindable count: bytes (``content=`` bytes/str, ``json=``,
    ``data=`` forms, or any body read into memory) and multipart forms whose files are bytes or
    seekable (httpx seeks them back to 0). Iterators and file objects given as ``content=``
    are read once.
    """
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)
    if type(stream).__name__ != "MultipartStream" or not isinstance(fields, list):
        return False
    return all(_rewindable(getattr(field, "file", b"")) for field in fields)


def _rewindable(file: object) -> bool:
    if isinstance(file, (str, bytes)):
        return True
    seekable = getattr(file, "seekable", None)
    try:
        return callable(seekable) and bool(seekable())
    except (OSError, ValueError):  # a closed file
        return False
