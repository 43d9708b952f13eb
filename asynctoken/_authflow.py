"""When an HTTP client sends a credential's token, and what it does with a 401: one set of rules.

The aiohttp middleware (:class:`~asynctoken.TokenMiddleware`), the httpx auth
(``asynctoken.httpx.TokenAuth``) and any other client adapter differ only in how they read a
request and a response. What they decide is decided here, so that the rules cannot drift apart:

* which origins the token may go to (:meth:`AuthRules.covers`): the ``origins`` given, else the
  origin of the first request; plain ``http`` to another machine is refused;
* which headers authorize one request (:meth:`AuthRules.headers`): a function of the token, the
  method and the URL, so that a scheme with a per-request proof fits the same seam;
* whether a 401 is one that another token can fix (:meth:`AuthRules.verdict`);
* which token to send the request again with, once (:func:`token_for_retry`,
  :func:`token_for_retry_sync`), given whether the transport can send the body again (only the
  transport knows that: aiohttp marks consumed payloads, httpx streams are one-shot, ...).

An adapter's flow, in any client library::

    if not rules.covers(url.scheme, url.host, url.port):
        return send(request)                 # another origin: untouched
    token = get_token(key)
    request.headers.update(rules.headers(token, request.method, request.url))
    response = send(request)
    if response.status != 401 or rules.verdict(www_authenticate(response)) is Verdict.KEEP:
        return response
    fresh = token_for_retry(manager, rules, token, replayable=..., ...)
    if fresh is None:
        return response                      # untouched and readable
    release(response)
    request.headers.update(rules.headers(fresh, request.method, request.url))
    return send(request)                     # once; a 401 to it is returned as is
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from yarl import URL

from ._errors import ConfigurationError
from ._secrets import mask
from ._token import Token
from .providers._http import is_loopback_host

if TYPE_CHECKING:
    from ._manager import TokenManager

__all__ = [
    "AuthRules",
    "Origin",
    "SyncManager",
    "Verdict",
    "origin_text",
    "parse_origin",
    "token_for_retry",
    "token_for_retry_sync",
    "warn_not_replayable",
]

logger = logging.getLogger("asynctoken")

#: ``(scheme, host, port)``: scheme and host in lowercase ASCII (IDNA), port always explicit.
Origin = tuple[str, str, int | None]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_CLEAR_TEXT_SCHEMES: Final = frozenset({"http", "ws"})
# ``error="invalid_token"`` or ``error=invalid_token`` inside a challenge (RFC 6750 §3). The
# leading separator keeps ``error_description=`` and ``error_uri=`` from matching.
_ERROR_PARAM: Final = re.compile(r'(?:^|[\s,])error\s*=\s*(?:"([^"]*)"|([^\s,]+))', re.IGNORECASE)
_BEARER: Final = re.compile(r"(?:^|,)\s*bearer(?:\s|,|$)", re.IGNORECASE)


class SyncManager(Protocol):
    """What a synchronous flow needs from its manager (``asynctoken.sync.SyncTokenManager``)."""

    def get_token(self, key: str) -> Token:
        """A valid token for ``key``, refreshing it first when needed."""
        ...  # pragma: no cover

    def token_rejected(self, key: str, token: Token) -> Token | None:
        """Drop ``token`` if still current; the token to retry with, or ``None``."""
        ...  # pragma: no cover


class Verdict(enum.Enum):
    """What a 401 answer asks of the client."""

    #: Another token would be refused the same way (or the caller asked for explicit
    #: ``invalid_token`` challenges only): hand the 401 back untouched.
    KEEP = "keep"
    #: The token itself was refused: drop it, and send the request once more with the next.
    NEW_TOKEN = "new token"


class AuthRules:
    """The transport-neutral part of a token-sending client adapter: see the module docstring.

    One instance per adapter object (middleware, auth), shared by all its requests; safe to use
    from several threads (a sync client's) as well as from one event loop.

    Args:
        key: the credential's key in the manager.
        origins: URLs (only scheme, host and port count) the token may be sent to; ``None`` pins
            it to the first request's origin.
        require_invalid_token: only 401s with ``Bearer error="invalid_token"`` call for a new
            token.
        allow_insecure_http: allow plain ``http`` to hosts that are not loopback.

    Raises:
        ConfigurationError: ``key`` is empty, an origin is not an absolute URL, or an origin is
            plain ``http://`` to a non-loopback host without ``allow_insecure_http``.
    """

    __slots__ = (
        "_cached",
        "_origins",
        "_pin_lock",
        "allow_insecure_http",
        "key",
        "require_invalid_token",
    )

    def __init__(
        self,
        key: str,
        *,
        origins: Iterable[object] | None = None,
        require_invalid_token: bool = False,
        allow_insecure_http: bool = False,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigurationError("key must be a non-empty string")
        if isinstance(origins, (str, bytes)) or hasattr(origins, "scheme"):  # one URL object
            raise ConfigurationError("origins must be an iterable of URLs, not a single URL")
        if not isinstance(allow_insecure_http, bool):
            raise ConfigurationError("allow_insecure_http must be True or False")
        self.key = key
        self.require_invalid_token = bool(require_invalid_token)
        self.allow_insecure_http = allow_insecure_http
        self._origins: frozenset[Origin] | None = None
        self._pin_lock = threading.Lock()
        if origins is not None:
            parsed = frozenset(parse_origin(origin) for origin in origins)
            if not parsed:
                raise ConfigurationError("origins must not be empty; pass None for the default")
            for origin in sorted(parsed, key=origin_text):
                self._check_secure(origin)
            self._origins = parsed
        # The last token and its headers, as ONE attribute: a thread reading it never sees the
        # headers of one token paired with another.
        self._cached: tuple[Token | None, Mapping[str, str]] = (None, {})

    @property
    def origins(self) -> frozenset[Origin] | None:
        """The origins the token goes to; ``None`` until the first request pins one."""
        return self._origins

    def covers(self, scheme: str, host: str | None, port: int | None) -> bool:
        """Whether a request to this origin gets the token; the first call may pin the origin.

        Pass the URL's parts as the client library gives them: scheme and host in lowercase,
        the host IDNA-encoded (``yarl.URL.raw_host``, ``httpx.URL.raw_host`` decoded), ``port``
        ``None`` for the scheme's default.

        Raises:
            ConfigurationError: this would be the first request's origin, and it is plain
                ``http`` to a host that is not loopback (without ``allow_insecure_http``).
                Nothing is pinned then.
        """
        if port is None:
            port = _DEFAULT_PORTS.get(scheme)
        origin = (scheme, host or "", port)
        origins = self._origins
        if origins is None:
            return self._pin(origin)
        return origin in origins

    def headers(self, token: Token, method: str, url: object) -> Mapping[str, str]:
        """The headers that authorize one request with ``token``; set them all on the request.

        For a bearer token that is ``Authorization`` alone, built once per token. ``method``
        and ``url`` (anything whose ``str()`` is the absolute URL) are there for schemes that
        add a per-request proof. The mapping returned must not be modified.
        """
        cached = self._cached
        if cached[0] is token:
            return cached[1]
        headers = {"Authorization": token.authorization}
        self._cached = (token, headers)
        return headers

    def verdict(self, challenges: Iterable[str]) -> Verdict:
        """What a 401 with these ``WWW-Authenticate`` values calls for.

        * ``Bearer error="invalid_token"``: a new token (RFC 6750).
        * A Bearer challenge naming another error (``insufficient_scope``, ...): nothing; a new
          token would be refused the same way.
        * No Bearer error at all (Laravel's ``{"message":"Unauthenticated."}`` has no
          challenge): a new token, unless ``require_invalid_token``.
        """
        for challenge in challenges:
            if not _BEARER.search(challenge):
                continue
            match = _ERROR_PARAM.search(challenge)
            if match is not None:
                error = match.group(1) if match.group(1) is not None else match.group(2)
                return Verdict.NEW_TOKEN if error.lower() == "invalid_token" else Verdict.KEEP
        return Verdict.KEEP if self.require_invalid_token else Verdict.NEW_TOKEN

    def describe(self) -> str:
        """The options, for the adapter's ``repr`` (never a token)."""
        origins = (
            "first request"
            if self._origins is None
            else sorted(origin_text(origin) for origin in self._origins)
        )
        insecure = ", allow_insecure_http=True" if self.allow_insecure_http else ""
        return (
            f"key={self.key!r}, origins={origins!r}, "
            f"require_invalid_token={self.require_invalid_token}{insecure}"
        )

    def _pin(self, origin: Origin) -> bool:
        with self._pin_lock:  # two threads' first requests: one origin wins, the other is not sent
            if self._origins is not None:
                return origin in self._origins
            self._check_secure(origin)
            self._origins = frozenset((origin,))
        logger.info(
            "credential %r: its token is sent to %s only (the first request's origin); pass "
            "origins=[...] to allow others",
            self.key,
            origin_text(origin),
        )
        return True

    def _check_secure(self, origin: Origin) -> None:
        """Refuse a clear-text origin on another machine, unless ``allow_insecure_http``."""
        scheme, host, _ = origin
        if (
            scheme.lower() in _CLEAR_TEXT_SCHEMES
            and not self.allow_insecure_http
            and not is_loopback_host(host)
        ):
            raise ConfigurationError(
                f"refusing to send the access token over plain {scheme} to "
                f"{origin_text(origin)}, which is not a loopback host (anyone on "
                "the way could read and reuse it); use https, or pass allow_insecure_http=True",
                key=self.key,
            )


async def token_for_retry(
    manager: TokenManager,
    rules: AuthRules,
    token: Token,
    *,
    replayable: bool,
    method: str,
    url: object,
    body: str,
) -> Token | None:
    """After a 401 with :attr:`Verdict.NEW_TOKEN`: the token to send the request again with.

    ``token`` (the one the request carried) is dropped in every case if it is still the
    current one, so the next request gets another; the next token comes from
    :meth:`TokenManager.token_rejected` (one refresh for any number of rejected requests).
    ``None`` means "return the 401": the body cannot be sent again (``replayable`` false; a
    warning names the request and ``body``, its type), or a retry would not help (the manager
    kept ``token`` because it had just replaced a rejected one).

    Raises:
        TokenError: no token could be had for the key.
    """
    if not replayable:
        # Only dropped: the caller gets its 401 now, the next request waits for the refresh.
        await manager.invalidate(rules.key, token)
        warn_not_replayable(rules, method, url, body)
        return None
    return _checked(rules, token, await manager.token_rejected(rules.key, token))


def token_for_retry_sync(
    manager: SyncManager,
    rules: AuthRules,
    token: Token,
    *,
    replayable: bool,
    method: str,
    url: object,
    body: str,
) -> Token | None:
    """:func:`token_for_retry` for a synchronous manager.

    With a body that cannot be sent again the rejected token is replaced right away (the sync
    manager offers ``token_rejected`` only); the 401 is still returned without a retry.
    """
    fresh = manager.token_rejected(rules.key, token)
    if not replayable:
        warn_not_replayable(rules, method, url, body)
        return None
    return _checked(rules, token, fresh)


def _checked(rules: AuthRules, token: Token, fresh: Token | None) -> Token | None:
    if fresh is None or fresh.access_token == token.access_token:
        # The manager refused to drop it (it just replaced a rejected token): sending the same
        # token again cannot help.
        logger.debug(
            "credential %r: access token %s rejected with 401 again; not retrying",
            rules.key,
            mask(token.access_token),
        )
        return None
    logger.debug(
        "credential %r: access token %s rejected with 401; retrying once",
        rules.key,
        mask(token.access_token),
    )
    return fresh


def warn_not_replayable(rules: AuthRules, method: str, url: object, body: str) -> None:
    """Log that a 401 is returned without a retry because its body cannot be sent again."""
    logger.warning(
        "credential %r: %s %s answered 401, but its body (%s) was consumed and cannot be "
        "sent again; the 401 is returned without a retry",
        rules.key,
        method,
        URL(str(url)).with_query(None).with_fragment(None),
        body,
    )


def parse_origin(value: object) -> Origin:
    """The origin of an absolute URL given as text, ``yarl.URL`` or ``httpx.URL``.

    Raises:
        ConfigurationError: ``value`` is not an absolute URL.
    """
    url = value if isinstance(value, URL) else URL(str(value))
    if not url.absolute or not url.scheme or not url.raw_host:
        raise ConfigurationError(f"origin {str(value)!r} is not an absolute URL")
    port = url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)
    return (url.scheme, url.raw_host, port)


def origin_text(origin: Origin) -> str:
    """``scheme://host:port`` (brackets around IPv6 hosts)."""
    scheme, host, port = origin
    return str(URL.build(scheme=scheme, host=host, port=port))
