"""What every token endpoint provider shares: option checks, one request, parsing, ``repr``."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping

import aiohttp

from .._errors import ConfigurationError, InvalidGrantError
from .._secrets import mask
from .._token import Token
from ._http import (
    RawResponse,
    TokenRequest,
    check_extra_headers,
    check_max_response_bytes,
    check_nonempty_str,
    check_timeout,
    check_token_url,
    endpoint_host,
    send_token_request,
)
from ._parse import parse_token_response

__all__ = ["BaseTokenProvider", "basic_authorization", "check_expires_in"]


def basic_authorization(user: str, password: str) -> str:
    """The value of an ``Authorization: Basic`` header for ``user:password`` (UTF-8)."""
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def check_expires_in(value: object, name: str) -> float | None:
    """Validate an optional, positive, finite number of seconds."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds or None")
    return float(value)


class BaseTokenProvider:
    """Shared implementation of :class:`~asynctoken.providers.Provider`; not public.

    Subclasses set :attr:`name`, implement :meth:`build_request` and
    :attr:`can_reauthenticate`, and may extend :meth:`parse_response`.
    """

    __slots__ = (
        "_client_secret",
        "_default_expires_in",
        "_extra_headers",
        "_password",
        "client_id",
        "max_response_bytes",
        "timeout",
        "token_url",
    )

    name: str = "oauth2"

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        allow_insecure_http: bool,
        timeout: float,
        max_response_bytes: int,
        extra_headers: Mapping[str, str] | None,
        default_expires_in: float | None = None,
        require_client_secret: bool = True,
    ) -> None:
        if not isinstance(allow_insecure_http, bool):
            raise ConfigurationError("allow_insecure_http must be True or False")
        self.token_url: str = check_token_url(token_url, allow_insecure_http=allow_insecure_http)
        self.client_id: str = check_nonempty_str(client_id, "client_id")
        if require_client_secret:
            check_nonempty_str(client_secret, "client_secret")
        elif not isinstance(client_secret, str):
            raise ConfigurationError("client_secret must be a string")
        self._client_secret = client_secret
        self.timeout: float = check_timeout(timeout)
        self.max_response_bytes: int = check_max_response_bytes(max_response_bytes)
        self._extra_headers = check_extra_headers(extra_headers)
        self._default_expires_in = check_expires_in(default_expires_in, "default_expires_in")
        self._password: str | None = None  # subclasses with a password grant set it

    @property
    def can_reauthenticate(self) -> bool:
        """Whether a token can be had without a refresh token (a primary grant is configured)."""
        return False

    def build_request(self, refresh_token: str | None) -> TokenRequest:
        """Build the token request for ``refresh_token`` (or the primary grant when ``None``).

        Raises:
            InvalidGrantError: ``refresh_token`` is ``None`` and no primary grant is configured.
        """
        raise NotImplementedError  # pragma: no cover

    def parse_response(
        self, response: RawResponse, *, request: TokenRequest, issued_at: float
    ) -> Token:
        """Map a raw answer to a :class:`Token` or raise the typed error (pure, no I/O).

        Args:
            response: what :meth:`fetch_token` received.
            request: the request it answers (its grant type words the errors, its secrets and
                the provider's are redacted from them).
            issued_at: unix time the request was sent.
        """
        return parse_token_response(
            response.status,
            response.headers,
            response.body,
            issued_at=issued_at,
            provider=self.name,
            grant_type=request.grant_type,
            endpoint=endpoint_host(self.token_url),
            default_expires_in=self._default_expires_in,
            max_response_bytes=self.max_response_bytes,
            redact=(*request.secrets, *self._secret_values()),
        )

    async def fetch_token(
        self,
        session: aiohttp.ClientSession,
        *,
        refresh_token: str | None,
        issued_at: float,
        current: Token | None = None,
    ) -> Token:
        """Make exactly one token request and return the new token.

        Args:
            session: the session to send it with. Pass one with
                ``cookie_jar=aiohttp.DummyCookieJar()``: a jar would add its own cookies to the
                request. Session middlewares are bypassed and redirects are not followed.
            refresh_token: use the refresh-token grant with this token; ``None`` (or ``""``)
                means the primary grant (password or client credentials).
            issued_at: unix time at which the request is sent; ``expires_at`` of the result is
                ``issued_at + expires_in``.
            current: the credential's stored token, if any (unused here; providers that keep
                state with the credential, such as a DPoP key, read it).

        Returns:
            The new token; its ``refresh_token`` is ``None`` when the answer carried none.

        Raises:
            InvalidGrantError: the refresh token or password is dead, or no refresh token was
                given and no primary grant is configured.
            InvalidClientError: the client credentials were rejected.
            TokenEndpointError: another final error answer (other 4xx, a redirect).
            TransientError: 5xx, 408, 429, ``temporarily_unavailable``, a network error or a
                timeout (``retry_after`` from the answer).
            MalformedResponseError: the answer was not a usable token response.
        """
        request = self.build_request(refresh_token or None)
        response = await send_token_request(
            session,
            request,
            provider=self.name,
            timeout=self.timeout,
            max_response_bytes=self.max_response_bytes,
        )
        return self.parse_response(response, request=request, issued_at=issued_at)

    def _base_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        headers.update(self._extra_headers)
        return headers

    def _no_primary_grant(self, hint: str) -> InvalidGrantError:
        return InvalidGrantError(
            f"{self.name}: no refresh token is stored and no {hint} is configured; re-authorize: "
            "seed a refresh token for this credential"
        )

    def _secret_values(self) -> tuple[str, ...]:
        # Every secret this provider holds, whether or not this request carried it: a server may
        # echo anything it ever saw.
        if self._password is None:
            return (self._client_secret,)
        return (self._client_secret, self._password)

    def _repr_fields(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        fields = [
            f"token_url={self.token_url!r}",
            f"client_id={self.client_id!r}",
            f"client_secret={mask(self._client_secret)!r}",
            *self._repr_fields(),
        ]
        if self._extra_headers:
            fields.append(f"extra_headers={sorted(self._extra_headers)!r}")
        return f"{type(self).__name__}({', '.join(fields)})"
