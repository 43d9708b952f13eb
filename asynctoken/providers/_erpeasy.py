"""ERPeasy (Spring OAuth2): Basic client auth, the refresh token travels in a cookie."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from http.cookies import CookieError, Morsel, SimpleCookie
from typing import Literal

from yarl import URL

try:
    # aiohttp's lenient Set-Cookie parser (what ClientResponse.cookies uses, 3.12.14 and later):
    # it reads what servers really send (long weekday names, Partitioned, Priority, ...).
    from aiohttp._cookie_helpers import parse_set_cookie_headers
except ImportError:  # pragma: no cover - a future aiohttp that moved it: the stdlib's parser

    def parse_set_cookie_headers(headers: Sequence[str]) -> list[tuple[str, Morsel[str]]]:
        cookies: list[tuple[str, Morsel[str]]] = []
        for header in headers:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(header)
            cookies.extend(jar.items())
        return cookies


from .._errors import ConfigurationError, InvalidGrantError, MalformedResponseError
from .._token import Token
from ._common import BaseTokenProvider, basic_authorization
from ._headers import http_date
from ._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    RawResponse,
    TokenRequest,
    check_optional_str,
    endpoint_host,
)

__all__ = ["ERPeasyProvider"]

logger = logging.getLogger("asynctoken.providers")

REFRESH_COOKIE = "refresh_token"
_REFRESH_TOKEN_IN = ("both", "cookie", "body")
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
_MAX_AGE = re.compile(r"-?[0-9]+")
# Where a proxy folded several Set-Cookie lines into one (RFC 6265 §3 forbids it): a comma
# followed by the next cookie's "name=". The comma inside an Expires date is followed by a
# space and a day number, never by "name=".
_FOLD = re.compile(r",\s*(?=[!#$%&'*+\-.^_`|~0-9A-Za-z]+=)")


def is_cookie_value_safe(value: str) -> bool:
    """Whether ``value`` can be sent as a cookie value unquoted (RFC 6265 ``cookie-octet``s)."""
    return _COOKIE_OCTETS.fullmatch(value) is not None


def _cookies(set_cookie: tuple[str, ...]) -> Iterator[Morsel[str]]:
    """Every cookie the ``Set-Cookie`` values set, in order, folded lines split again; one the
    parser refuses is skipped."""
    pieces = [piece for header in set_cookie for piece in _FOLD.split(header)]
    try:
        parsed = parse_set_cookie_headers(pieces)
    except CookieError:
        # A CPython patched for CVE-2026-3644 refuses control characters in cookies; aiohttp
        # releases without aio-libs/aiohttp#12395 let that escape. Then one piece at a time.
        parsed = []
        for piece in pieces:
            with contextlib.suppress(CookieError):
                parsed.extend(parse_set_cookie_headers([piece]))
    for _, morsel in parsed:
        yield morsel


def _path_matches(cookie_path: str | None, request_path: str) -> bool:
    """RFC 6265 §5.1.4 path-match; a cookie without ``Path`` gets the request's default path,
    which always matches it."""
    if not cookie_path or not cookie_path.startswith("/"):
        return True
    if cookie_path == request_path:
        return True
    return request_path.startswith(cookie_path) and (
        cookie_path.endswith("/") or request_path[len(cookie_path)] == "/"
    )


def _attribute(morsel: Morsel[str], name: str) -> str | None:
    value = morsel.get(name)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _is_live(morsel: Morsel[str], now: float) -> bool:
    """False for a deletion cookie: empty value, ``Max-Age`` ≤ 0, or ``Expires`` before ``now``.

    An unparsable ``Max-Age`` or ``Expires`` is ignored.
    """
    if not morsel.value:
        return False
    max_age = _attribute(morsel, "max-age")
    if max_age is not None and _MAX_AGE.fullmatch(max_age):
        # Max-Age wins over Expires (RFC 6265 §5.3 step 3).
        return int(max_age) > 0
    expires = _attribute(morsel, "expires")
    if expires is not None:
        when = http_date(expires)
        if when is not None:
            return when > now
    return True


class ERPeasyProvider(BaseTokenProvider):
    """The ERPeasy token endpoint (``https://api.erpeasy.compels.net/oauth/token``).

    Client credentials go in ``Authorization: Basic base64(client_id:client_secret)``. The
    refresh token is sent as a ``Cookie: refresh_token=…`` header built here (and, by default,
    also as a body field), and the rotated one is read only from the answer's
    ``Set-Cookie: refresh_token=…`` header, read from every ``Set-Cookie`` header of the answer
    with the standard library's cookie parser: the session's cookie jar is never involved, so
    ``Domain``, ``Path`` and ``Secure`` do not hide it, and a deletion of a same-named cookie
    with another ``Path`` does not either. Every other field of the answer
    (``user_id``, ``company_id``, ``company_document``, ``company_name``, ``jti``, …) is kept
    in :attr:`Token.extra`.

    Args:
        client_id: the client id ERPeasy issued (must not contain ``:``).
        client_secret: the client secret ERPeasy issued.
        email: the user's email, for the password grant (optional).
        password: the user's password, for the password grant (optional).
        company: the company's CNPJ, for the password grant (optional).
        token_url: the token endpoint; change it only for tests.
        refresh_token_in: where the refresh token goes: ``"both"`` (cookie and body field, the
            default: the vendor's example uses the cookie, its table lists the field),
            ``"cookie"`` or ``"body"``.
        allow_insecure_http: accept a plain ``http://`` ``token_url`` to a non-loopback host.
        timeout: total seconds for the request, body included.
        max_response_bytes: larger answers are rejected.
        extra_headers: more request headers (not ``Authorization``, ``Cookie``,
            ``Content-Type``, …).

    Raises:
        ConfigurationError: an argument is invalid, or the password grant is only partly
            configured (``email``, ``password`` and ``company`` go together).

    Example::

        provider = ERPeasyProvider(
            client_id="my-client", client_secret=os.environ["ERPEASY_SECRET"],
            email="me@example.com.br", password=os.environ["ERPEASY_PASSWORD"],
            company="12.345.678/0001-90",
        )
    """

    __slots__ = ("company", "email", "refresh_token_in")

    name: str = "erpeasy"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        email: str | None = None,
        password: str | None = None,
        company: str | None = None,
        token_url: str = "https://api.erpeasy.compels.net/oauth/token",
        *,
        refresh_token_in: Literal["both", "cookie", "body"] = "both",
        allow_insecure_http: bool = False,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            allow_insecure_http=allow_insecure_http,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            extra_headers=extra_headers,
        )
        if ":" in self.client_id:
            raise ConfigurationError("erpeasy: client_id must not contain ':' (Basic auth)")
        if refresh_token_in not in _REFRESH_TOKEN_IN:
            raise ConfigurationError(
                f"erpeasy: refresh_token_in must be one of {', '.join(_REFRESH_TOKEN_IN)}"
            )
        self.refresh_token_in: Literal["both", "cookie", "body"] = refresh_token_in
        self.email: str | None = check_optional_str(email, "email")
        self._password = check_optional_str(password, "password")
        self.company: str | None = check_optional_str(company, "company")
        given = [v is not None for v in (self.email, self._password, self.company)]
        if any(given) and not all(given):
            raise ConfigurationError(
                "erpeasy: the password grant needs email, password and company (the CNPJ) "
                "together; give all three or none"
            )

    @property
    def can_reauthenticate(self) -> bool:
        """True when ``email``, ``password`` and ``company`` are configured (password grant)."""
        return self._password is not None

    def build_request(self, refresh_token: str | None) -> TokenRequest:
        """Build the refresh-token request, or the password grant when ``refresh_token`` is None.

        Raises:
            InvalidGrantError: ``refresh_token`` is ``None`` and no password grant is configured,
                or ``refresh_token_in="cookie"`` and the token cannot be sent as a cookie.
        """
        authorization = basic_authorization(self.client_id, self._client_secret)
        headers = self._base_headers()
        headers["Authorization"] = authorization
        if refresh_token is None:
            if self.email is None or self._password is None or self.company is None:
                raise self._no_primary_grant("email/password/company (password grant)")
            return TokenRequest(
                url=self.token_url,
                grant_type="password",
                headers=headers,
                form={
                    "grant_type": "password",
                    "email": self.email,
                    "password": self._password,
                    "company": self.company,
                },
                secrets=(self._client_secret, self._password, authorization),
            )
        form = {"grant_type": "refresh_token"}
        if self.refresh_token_in in ("both", "body"):
            form["refresh_token"] = refresh_token
        if self.refresh_token_in in ("both", "cookie"):
            if is_cookie_value_safe(refresh_token):
                headers["Cookie"] = f"{REFRESH_COOKIE}={refresh_token}"
            elif self.refresh_token_in == "cookie":
                raise InvalidGrantError(
                    "erpeasy: the stored refresh token contains characters a cookie cannot "
                    "carry; re-authorize, or use refresh_token_in='both'"
                )
        return TokenRequest(
            url=self.token_url,
            grant_type="refresh_token",
            headers=headers,
            form=form,
            secrets=(self._client_secret, refresh_token, authorization),
        )

    def parse_response(
        self, response: RawResponse, *, request: TokenRequest, issued_at: float
    ) -> Token:
        """Parse the answer and take the new refresh token from ``Set-Cookie: refresh_token``.

        The cookie wins over a ``refresh_token`` JSON field. Every ``Set-Cookie`` header is read
        (several values folded into one line by a proxy are split again). A deletion cookie
        (empty value, ``Max-Age`` ≤ 0, ``Expires`` before ``issued_at``) is not a refresh
        token, nor is a value that a cookie cannot carry. Of the live ones, the last whose
        ``Path`` matches the token endpoint's path counts, else the last one.

        Raises:
            MalformedResponseError: as :func:`parse_token_response`; its ``refresh_token`` is
                the answer's refresh token cookie when there is a usable one.
        """
        try:
            token = super().parse_response(response, request=request, issued_at=issued_at)
        except MalformedResponseError as exc:
            # A success answer too broken to use may still have rotated the refresh token: hand
            # the cookie's (which wins over the JSON field) to the manager with the error.
            cookie = self._refresh_cookie(response, issued_at)
            if cookie is not None:
                exc.refresh_token = cookie
            raise
        cookie = self._refresh_cookie(response, issued_at)
        if cookie is not None:
            return token.with_refresh_token(cookie)
        if token.refresh_token is None and request.grant_type == "refresh_token":
            # ERPeasy rotates refresh tokens; a missing cookie usually means a proxy dropped it.
            logger.warning(
                "erpeasy: token answer from %s carried no refresh_token cookie; "
                "the previous refresh token is kept",
                endpoint_host(self.token_url),
            )
        return token

    def _refresh_cookie(self, response: RawResponse, issued_at: float) -> str | None:
        """The answer's new refresh token: its live, well-formed ``refresh_token`` cookie."""
        path = URL(self.token_url).path or "/"
        live = matching = None
        refused = False
        for morsel in _cookies(response.set_cookie):
            if morsel.key != REFRESH_COOKIE or not _is_live(morsel, issued_at):
                continue
            if not is_cookie_value_safe(morsel.value):
                # Most likely a cookie run on into the next one, or a quoted value with a space:
                # storing that would replace a good token with garbage.
                refused = True
                continue
            live = morsel.value
            if _path_matches(_attribute(morsel, "path"), path):
                matching = morsel.value
        if refused and live is None:
            logger.warning(
                "erpeasy: ignored the refresh_token cookie from %s: its value is not a valid "
                "cookie value (were several Set-Cookie headers folded into one?)",
                endpoint_host(self.token_url),
            )
        return matching if matching is not None else live

    def _repr_fields(self) -> list[str]:
        fields = [f"refresh_token_in={self.refresh_token_in!r}"]
        if self.email is None:
            return [*fields, "password_grant=False"]
        return [
            *fields,
            f"email={self.email!r}",
            f"company={self.company!r}",
            "password_grant=True",
        ]
