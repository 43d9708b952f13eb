"""``requests`` integration: :class:`TokenAuth`, a ``requests.auth.AuthBase`` for a credential.

Needs the ``requests`` extra: ``pip install 'asynctoken[requests]'``.

The same rules as the aiohttp :class:`~asynctoken.TokenMiddleware`, from the same place
(``asynctoken._authflow``): the token goes only to its origins, never over plain http to another
machine, and a 401 that a new token can fix is retried once, with the next token.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, Final

try:
    import requests
    from requests.cookies import extract_cookies_to_jar
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "asynctoken.requests needs requests: pip install 'asynctoken[requests]'"
    ) from exc

from yarl import URL

from ._authflow import AuthRules, SyncManager, Verdict, token_for_retry_sync
from ._errors import ConfigurationError
from ._token import Token

__all__ = ["TokenAuth"]

# Reading a small 401 body lets its connection go back to the pool instead of being closed.
_DRAIN_LIMIT: Final = 64 * 1024


class TokenAuth(requests.auth.AuthBase):
    """Authorizes ``requests`` calls with a credential's token, and renews it on HTTP 401.

    Give it a :class:`~asynctoken.sync.SyncTokenManager`::

        import os

        import requests
        from asynctoken import FileStore, KeliwebProvider
        from asynctoken.requests import TokenAuth
        from asynctoken.sync import SyncTokenManager

        tm = SyncTokenManager(store=FileStore("tokens.json"))
        tm.add("keliweb", KeliwebProvider(client_id=..., client_secret=...),
               refresh_token=os.environ["KELIWEB_REFRESH_TOKEN"])
        http = requests.Session()
        http.auth = TokenAuth(tm, "keliweb")
        invoices = http.get("https://fatture.keliweb.it/api/invoices").json()

    Each request gets ``Authorization`` from ``get_token(key)`` (a dict lookup while the token
    is fresh). When the answer is a 401 that a new token can fix (``Bearer
    error="invalid_token"``, or a 401 without a Bearer error unless ``require_invalid_token``),
    the token this request sent is reported rejected and the request is sent once more with
    the next token (a response hook); many requests rejected together, from any number of
    threads, cause one refresh. A 401 to the retry, or one that is not retried, is returned as
    is, its body readable; the retried answer keeps the first 401 in ``history``.

    A token bound to a DPoP key (``Token.dpop_key``, see ``OAuth2Provider(dpop=True)``) is sent
    as ``Authorization: DPoP`` with a new proof per request; a resource server's
    ``use_dpop_nonce`` 401 is answered by sending the request once more with its nonce.

    A body that cannot be sent twice (a generator, an iterator, a file that cannot seek back)
    is not sent again: you get the 401, a warning is logged, and your next request gets a new
    token. Bytes, strings, forms, JSON, ``files=`` uploads and seekable files are replayed.

    The token goes only to ``origins``, by default the origin (scheme, host, port) of the first
    request; requests to other origins, including redirects to them (``requests`` drops the
    header itself on a redirect to another host), pass through without it. A plain ``http://``
    origin whose host is not loopback raises :class:`~asynctoken.ConfigurationError` before
    anything is sent, unless ``allow_insecure_http=True``.

    Errors: a call can raise the manager's :class:`~asynctoken.TokenError` subclasses (not
    :class:`requests.RequestException`) when no token can be had.

    Args:
        manager: a :class:`~asynctoken.sync.SyncTokenManager` (anything whose ``get_token(key)``
            and ``token_rejected(key, token)`` are plain methods).
        key: the credential's key in the manager.
        origins: URLs (only scheme, host and port count) the token may be sent to; ``None`` pins
            it to the first request's origin.
        require_invalid_token: retry only 401s that carry ``Bearer error="invalid_token"``.
        allow_insecure_http: send the token over plain ``http://`` to hosts that are not
            loopback too.

    Raises:
        ConfigurationError: ``manager`` is not a synchronous manager (an asyncio
            :class:`~asynctoken.TokenManager` cannot serve blocking code), ``key`` is empty, an
            origin is not an absolute URL, or is plain ``http://`` to a non-loopback host
            without ``allow_insecure_http``.
    """

    __slots__ = ("_manager", "_rules")

    def __init__(
        self,
        manager: SyncManager,
        key: str,
        *,
        origins: Iterable[str] | None = None,
        require_invalid_token: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        get_token = getattr(manager, "get_token", None)
        rejected = getattr(manager, "token_rejected", None)
        if (
            not callable(get_token)
            or not callable(rejected)
            or inspect.iscoroutinefunction(get_token)
            or inspect.iscoroutinefunction(rejected)
        ):
            raise ConfigurationError(
                "requests is synchronous: TokenAuth needs a SyncTokenManager (from "
                f"asynctoken.sync import SyncTokenManager), got {type(manager).__name__}"
            )
        self._rules = AuthRules(
            key,
            origins=origins,
            require_invalid_token=require_invalid_token,
            allow_insecure_http=allow_insecure_http,
        )
        self._manager = manager

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """Authorize ``request`` and hook its answer (called by ``requests`` while preparing).

        Raises:
            TokenError: no token could be had for the key.
            ConfigurationError: the request would pin the token to a plain ``http://`` origin
                that is not loopback, and ``allow_insecure_http`` is off. Nothing was sent.
        """
        rules = self._rules
        url = URL(request.url or "")
        if not rules.covers(url.scheme, url.raw_host, url.port):
            return request
        token = self._manager.get_token(rules.key)
        _authorize(request, rules.headers(token, request.method or "GET", request.url))
        hook = functools.partial(self._on_response, token=token, position=_position(request))
        request.register_hook("response", hook)  # type: ignore[no-untyped-call]
        return request

    def _on_response(
        self,
        response: requests.Response,
        *,
        token: Token,
        position: int | None,
        **send_options: Any,
    ) -> requests.Response:
        """The response hook: on a 401 a new token can fix, send the request once more.

        A DPoP resource server asking for its nonce (``use_dpop_nonce``) gets the request once
        more with the same token and a proof carrying the nonce; the answer to that is judged
        once more, as the first one (a new token at most once).
        """
        rules = self._rules
        verdict = self._verdict(response, token, nonce_retry=True)
        if verdict is Verdict.NONCE:
            again = token_for_retry_sync(
                self._manager, rules, token, verdict=verdict, **_retry_facts(response, position)
            )
            if again is None:
                return response
            response = self._send_again(response, again, position, send_options)
            verdict = self._verdict(response, token, nonce_retry=False)
        if verdict is not Verdict.NEW_TOKEN:
            return response
        fresh = token_for_retry_sync(
            self._manager, rules, token, **_retry_facts(response, position)
        )
        if fresh is None:
            return response  # untouched: its body is still readable
        return self._send_again(response, fresh, position, send_options)

    def _verdict(self, response: requests.Response, token: Token, *, nonce_retry: bool) -> Verdict:
        """:attr:`Verdict.NEW_TOKEN` for a 401 from an origin the token went to that another
        token can fix; :attr:`Verdict.NONCE` (only when ``nonce_retry``) for a DPoP resource
        server's ``use_dpop_nonce``; else :attr:`Verdict.KEEP`."""
        rules = self._rules
        sent_url = response.request.url
        url = URL(sent_url or "")
        # After a redirect, the answer may come from an origin that never saw the token.
        if not rules.covers(url.scheme, url.raw_host, url.port):
            return Verdict.KEEP
        nonce = response.headers.get("DPoP-Nonce")
        if response.status_code != 401:
            if token.dpop_key is not None:  # a DPoP server may hand out its next nonce anytime
                rules.observe_nonce(sent_url, nonce)
            return Verdict.KEEP
        verdict = rules.verdict(_challenges(response), dpop_nonce=nonce, url=sent_url)
        if verdict is Verdict.NONCE and not nonce_retry:
            return Verdict.KEEP
        return verdict

    def _send_again(
        self,
        response: requests.Response,
        token: Token,
        position: int | None,
        send_options: dict[str, Any],
    ) -> requests.Response:
        """Send ``response``'s request once more with ``token``, through the transport adapter
        (no hooks run: a 401 to it is not retried by them)."""
        sent = response.request
        _drain(response)
        if position is not None:
            sent.body.seek(position)  # type: ignore[union-attr]
        retry = sent.copy()
        # Never a further retry, even if this one is redirected and then refused again.
        retry.hooks = {
            event: [hook for hook in hooks if not self._is_own(hook)]
            for event, hooks in sent.hooks.items()
        }
        # Cookies the 401 set go with the retry, as they would with any next request.
        cookies = getattr(retry, "_cookies", None)
        if cookies is not None:
            extract_cookies_to_jar(cookies, sent, response.raw)  # type: ignore[no-untyped-call]
            retry.prepare_cookies(cookies)
        _authorize(retry, self._rules.headers(token, retry.method or "GET", retry.url))
        answer: requests.Response = response.connection.send(retry, **send_options)
        answer.history = [*response.history, response, *answer.history]
        answer.request = retry
        return answer

    def _is_own(self, hook: object) -> bool:
        return isinstance(hook, functools.partial) and hook.func == self._on_response

    def __repr__(self) -> str:
        return f"TokenAuth({self._rules.describe()})"


def _authorize(request: requests.PreparedRequest, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.headers[name] = value


def _position(request: requests.PreparedRequest) -> int | None:
    """Where a file body starts, so that a retry can seek back there; ``None`` otherwise."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return None
    tell = getattr(body, "tell", None)
    seekable = getattr(body, "seekable", None)
    try:
        if callable(tell) and callable(seekable) and seekable():
            position: int = tell()
            return position
    except (OSError, ValueError):  # closed, or a pipe
        pass
    return None


def _retry_facts(response: requests.Response, position: int | None) -> dict[str, Any]:
    """What :func:`token_for_retry_sync` needs to know of the request that got ``response``."""
    sent = response.request
    return {
        "replayable": _replayable(sent.body, position),
        "method": sent.method or "GET",
        "url": sent.url,
        "body": type(sent.body).__name__,
    }


def _replayable(body: object, position: int | None) -> bool:
    """Bytes and text are sent again as they are; a file only if it can seek back."""
    return body is None or isinstance(body, (bytes, str)) or position is not None


def _challenges(response: requests.Response) -> list[str]:
    """Every ``WWW-Authenticate`` value (urllib3 keeps them apart; ``headers`` joins them)."""
    raw_headers = getattr(response.raw, "headers", None)
    getlist = getattr(raw_headers, "getlist", None)
    if callable(getlist):
        values: list[str] = list(getlist("WWW-Authenticate"))
        return values
    joined = response.headers.get("WWW-Authenticate")
    return [joined] if joined else []


def _drain(response: requests.Response) -> None:
    """Read a small body of a response about to be replaced, so its connection is reused."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= _DRAIN_LIMIT:
        with contextlib.suppress(requests.RequestException):
            response.content  # noqa: B018 - reading it is the point
    response.close()
