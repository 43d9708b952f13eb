"""When an HTTP client sends a credential's token, and what it does with a 401: one set of rules.

The aiohttp middleware (:class:`~asynctoken.TokenMiddleware`), the httpx auth
(``asynctoken.httpx.TokenAuth``) and any other client adapter differ only in how they read a
request and a response. What they decide is decided here, so that the rules cannot drift apart:

* which origins the token may go to (:meth:`AuthRules.covers`): the ``origins`` given, else the
  origin of the first request; plain ``http`` to another machine is refused;
* which headers authorize one request (:meth:`AuthRules.headers`): a function of the token, the
  method and the URL: ``Authorization: Bearer`` built once per token, or for a DPoP-bound token
  (RFC 9449) ``Authorization: DPoP`` plus a new proof per request (``htm``, ``htu``, ``iat``,
  ``jti``, ``ath``, and the server's last ``DPoP-Nonce``);
* whether a 401 is one that another token can fix (:meth:`AuthRules.verdict`), or one that the
  same DPoP token fixes with the nonce the resource server just sent (``use_dpop_nonce``);
* which token to send the request again with, once (:func:`token_for_retry`,
  :func:`token_for_retry_sync`), given whether the transport can send the body again (only the
  transport knows that: aiohttp marks consumed payloads, httpx streams are one-shot, ...).

An adapter's flow, in any client library::

    if not rules.covers(url.scheme, url.host, url.port):
        return send(request)                 # another origin: untouched
    token = get_token(key)
    request.headers.update(rules.headers(token, request.method, request.url))
    response = send(request)
    verdict = rules.verdict(www_authenticate(response), dpop_nonce=..., url=request.url)
    if response.status != 401 or verdict is Verdict.KEEP:
        return response
    fresh = token_for_retry(manager, rules, token, verdict=verdict, replayable=..., ...)
    if fresh is None:
        return response                      # untouched and readable
    release(response)
    request.headers.update(rules.headers(fresh, request.method, request.url))
    return send(request)                     # once; a 401 to it is returned as is
                                             # (after a nonce retry: judged once more)
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
    from ._dpop import DPoPKey, DPoPNonces
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
_DPOP: Final = re.compile(r"(?:^|,)\s*dpop(?:\s|,|$)", re.IGNORECASE)


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
    #: A DPoP resource server wants a nonce it just sent (``use_dpop_nonce``): send the request
    #: once more with the same token and a proof carrying the nonce.
    NONCE = "nonce"


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
        "_dpop_key",
        "_nonces",
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
        # DPoP: the last token's parsed key (JWK text, key), and the resource servers' nonces.
        self._dpop_key: tuple[str, DPoPKey] | None = None
        self._nonces: DPoPNonces | None = None

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

        For a bearer token that is ``Authorization`` alone, built once per token. For a token
        bound to a DPoP key (:attr:`Token.dpop_key`) it is ``Authorization: DPoP …`` and a new
        ``DPoP`` proof for this ``method`` and ``url`` (anything whose ``str()`` is the absolute
        URL; query and fragment are left out of the proof), with the last nonce this origin
        sent. The mapping returned must not be modified.
        """
        if token.dpop_key is not None:
            return self._dpop_headers(token, token.dpop_key, method, url)
        cached = self._cached
        if cached[0] is token:
            return cached[1]
        headers = {"Authorization": token.authorization}
        self._cached = (token, headers)
        return headers

    def _dpop_headers(self, token: Token, jwk: str, method: str, url: object) -> dict[str, str]:
        cached = self._dpop_key
        if cached is not None and cached[0] == jwk:
            key = cached[1]
        else:
            from ._dpop import DPoPKey

            key = DPoPKey.from_jwk(jwk)
            self._dpop_key = (jwk, key)
        # A yarl URL (aiohttp) is used as is: parsing its text again costs more than signing.
        target = url if isinstance(url, URL) else URL(str(url))
        nonce = None if self._nonces is None else self._nonces.get(target)
        proof = key.proof(method, target, access_token=token.access_token, nonce=nonce)
        return {"Authorization": token.authorization, "DPoP": proof}

    def observe_nonce(self, url: object, nonce: str | None) -> bool:
        """Remember a ``DPoP-Nonce`` response header of ``url``'s server for later proofs.

        Returns:
            Whether it is a new nonce for that server.
        """
        if not nonce:
            return False
        nonces = self._nonces
        if nonces is None:
            from ._dpop import DPoPNonces

            nonces = self._nonces = DPoPNonces()
        return nonces.update(str(url), nonce)

    def verdict(
        self,
        challenges: Iterable[str],
        *,
        dpop_nonce: str | None = None,
        url: object = None,
    ) -> Verdict:
        """What a 401 with these ``WWW-Authenticate`` values calls for.

        * ``DPoP error="use_dpop_nonce"`` with a ``DPoP-Nonce`` (``dpop_nonce``, the response
          header of the request to ``url``): :attr:`Verdict.NONCE`; the nonce is used in the
          next proofs to that origin. Adapters retry a request once for a nonce.
        * ``DPoP error="invalid_token"``: a new token; another DPoP error (a proof the server
          did not like): nothing, a new token would not change that.
        * ``Bearer error="invalid_token"``: a new token (RFC 6750).
        * A Bearer challenge naming another error (``insufficient_scope``, ...): nothing; a new
          token would be refused the same way.
        * No Bearer error at all (Laravel's ``{"message":"Unauthenticated."}`` has no
          challenge): a new token, unless ``require_invalid_token``.
        """
        for challenge in challenges:
            if _DPOP.search(challenge):
                return self._dpop_verdict(challenge, dpop_nonce, url)
            if not _BEARER.search(challenge):
                continue
            match = _ERROR_PARAM.search(challenge)
            if match is not None:
                error = match.group(1) if match.group(1) is not None else match.group(2)
                return Verdict.NEW_TOKEN if error.lower() == "invalid_token" else Verdict.KEEP
        return Verdict.KEEP if self.require_invalid_token else Verdict.NEW_TOKEN

    def _dpop_verdict(self, challenge: str, nonce: str | None, url: object) -> Verdict:
        match = _ERROR_PARAM.search(challenge)
        if match is None:
            return Verdict.KEEP if self.require_invalid_token else Verdict.NEW_TOKEN
        error = (match.group(1) if match.group(1) is not None else match.group(2)).lower()
        if error == "use_dpop_nonce":
            # Retried even when another request already brought this nonce: this one was sent
            # before it arrived. Adapters retry a request once for a nonce, so it stays bounded.
            if url is None or not nonce:
                return Verdict.KEEP
            self.observe_nonce(url, nonce)
            return Verdict.NONCE
        return Verdict.NEW_TOKEN if error == "invalid_token" else Verdict.KEEP

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
    verdict: Verdict = Verdict.NEW_TOKEN,
) -> Token | None:
    """After a 401 with :attr:`Verdict.NEW_TOKEN`: the token to send the request again with.

    With :attr:`Verdict.NONCE` it is ``token`` itself (nothing is dropped: the resource server
    only wants a proof with its nonce), or ``None`` if the body cannot be sent again.

    ``token`` (the one the request carried) is dropped in every case if it is still the
    current one, so the next request gets another; the next token comes from
    :meth:`TokenManager.token_rejected` (one refresh for any number of rejected requests).
    ``None`` means "return the 401": the body cannot be sent again (``replayable`` false; a
    warning names the request and ``body``, its type), or a retry would not help (the manager
    kept ``token`` because it had just replaced a rejected one).

    Raises:
        TokenError: no token could be had for the key.
    """
    if verdict is Verdict.NONCE:
        if not replayable:
            warn_not_replayable(rules, method, url, body)
            return None
        return token
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
    verdict: Verdict = Verdict.NEW_TOKEN,
) -> Token | None:
    """:func:`token_for_retry` for a synchronous manager.

    With a body that cannot be sent again the rejected token is replaced right away (the sync
    manager offers ``token_rejected`` only); the 401 is still returned without a retry.
    """
    if verdict is Verdict.NONCE:
        if not replayable:
            warn_not_replayable(rules, method, url, body)
            return None
        return token
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
        URL(str(url)).with_user(None).with_query(None).with_fragment(None),  # no secrets
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
