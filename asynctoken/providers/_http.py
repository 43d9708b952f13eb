"""The one place where providers touch the network: URL checks, the request value, sending it."""

from __future__ import annotations

import asyncio
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, Morsel

import aiohttp
from yarl import URL

from .._errors import ConfigurationError, TransientError

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "RawResponse",
    "TokenRequest",
    "check_extra_headers",
    "check_max_response_bytes",
    "check_nonempty_str",
    "check_optional_str",
    "check_timeout",
    "check_token_url",
    "endpoint_host",
    "send_token_request",
]

DEFAULT_MAX_RESPONSE_BYTES = 1_048_576

# Headers the providers own: letting ``extra_headers`` set them would break the request or smuggle
# a credential past the masking rules.
_RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "content-length", "cookie", "host", "transfer-encoding"}
)


@dataclass(frozen=True, slots=True, repr=False)
class TokenRequest:
    """One token request, built by a provider and sent by :func:`send_token_request`.

    Attributes:
        url: the token endpoint.
        grant_type: the OAuth2 grant (``"refresh_token"``, ``"password"``,
            ``"client_credentials"``).
        headers: request headers, ``Authorization`` and ``Cookie`` included.
        form: the ``application/x-www-form-urlencoded`` body fields.
        secrets: the secret values this request carries (client secret, password, refresh token,
            encoded ``Authorization``), redacted from any error message built from the answer.
    """

    url: str
    grant_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Names only: every value of interest here is a credential.
        return (
            f"TokenRequest(url={self.url!r}, grant_type={self.grant_type!r}, "
            f"headers={sorted(self.headers)!r}, form={sorted(self.form)!r})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class RawResponse:
    """What came back: status, headers, cookies, at most ``max_response_bytes + 1`` body bytes.

    Attributes:
        status: the HTTP status code.
        headers: the response headers (case-insensitive when they come from aiohttp).
        body: the body, possibly cut one byte past the size limit.
        cookies: the cookies this answer's ``Set-Cookie`` headers set, by name (the last one of
            a name wins), as aiohttp parsed them (:attr:`aiohttp.ClientResponse.cookies`): no
            cookie jar was involved, so ``Domain``, ``Path`` and ``Secure`` filtered nothing.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    cookies: Mapping[str, Morsel[str]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"RawResponse(status={self.status!r}, body_bytes={len(self.body)})"


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token_url(token_url: object, *, allow_insecure_http: bool) -> str:
    """Validate a token endpoint URL and return it.

    Args:
        token_url: the URL to check.
        allow_insecure_http: accept ``http://`` to any host (otherwise loopback only).

    Returns:
        The URL, unchanged.

    Raises:
        ConfigurationError: not an absolute http(s) URL, credentials in it, or plain http to a
            non-loopback host without ``allow_insecure_http``.
    """
    if not isinstance(token_url, str) or not token_url:
        raise ConfigurationError("token_url must be a non-empty string")
    try:
        url = URL(token_url)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"token_url is not a valid URL ({type(exc).__name__})") from exc
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError("token_url must be an absolute https:// URL")
    if url.user is not None or url.password is not None:
        raise ConfigurationError("token_url must not contain credentials (user:password@)")
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise ConfigurationError(
            f"token_url uses plain http to {url.host}, which would send client secrets and "
            "tokens in clear text; use https, or pass allow_insecure_http=True"
        )
    return token_url


def endpoint_host(token_url: str) -> str:
    """The host (and explicit port) of ``token_url``, for messages: never the path or query."""
    url = URL(token_url)
    host = url.host or "?"
    if url.explicit_port is not None:
        return f"{host}:{url.explicit_port}"
    return host


def check_timeout(timeout: object) -> float:
    """Validate the ``timeout`` option: a positive, finite number of seconds."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigurationError("timeout must be a positive number of seconds")
    return float(timeout)


def check_max_response_bytes(max_response_bytes: object) -> int:
    """Validate the ``max_response_bytes`` option: a positive integer."""
    if (
        isinstance(max_response_bytes, bool)
        or not isinstance(max_response_bytes, int)
        or max_response_bytes < 1
    ):
        raise ConfigurationError("max_response_bytes must be a positive integer")
    return max_response_bytes


def check_extra_headers(extra_headers: Mapping[str, str] | None) -> dict[str, str]:
    """Validate ``extra_headers``: string names and values, no line breaks, no reserved names."""
    if extra_headers is None:
        return {}
    if not isinstance(extra_headers, Mapping):
        raise ConfigurationError("extra_headers must be a mapping of header names to values")
    headers: dict[str, str] = {}
    for name, value in extra_headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError("extra_headers names and values must be strings")
        if not name or any(c in name for c in ":\r\n\0 \t"):
            raise ConfigurationError(f"extra_headers: invalid header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ConfigurationError(f"extra_headers: the value of {name!r} contains a line break")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigurationError(f"extra_headers must not set {name!r}: the provider sets it")
        headers[name] = value
    return headers


def check_nonempty_str(value: object, name: str) -> str:
    """Return ``value`` if it is a non-empty string, else raise :class:`ConfigurationError`."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value


def check_optional_str(value: object, name: str) -> str | None:
    """Return ``value`` if it is ``None`` or a non-empty string, else raise."""
    if value is None:
        return None
    return check_nonempty_str(value, name)


async def _read_limited(content: aiohttp.StreamReader, limit: int) -> bytes:
    # Read one byte past the limit so that the parser can tell "exactly at the limit" from
    # "too large", without ever buffering an unbounded body.
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _response_cookies(resp: aiohttp.ClientResponse) -> dict[str, Morsel[str]]:
    # ClientResponse.cookies parses this answer's own Set-Cookie headers with aiohttp's lenient
    # parser, independently of the session's cookie jar.
    try:
        return dict(resp.cookies)
    except CookieError:
        # aiohttp releases without aio-libs/aiohttp#12395 let a CPython patched for
        # CVE-2026-3644 raise here on a control character in a cookie: no usable cookie then.
        return {}


async def send_token_request(
    session: aiohttp.ClientSession,
    request: TokenRequest,
    *,
    provider: str,
    timeout: float,
    max_response_bytes: int,
) -> RawResponse:
    """POST ``request`` once and return the raw answer.

    No redirects are followed, no session middleware runs, no cookie is passed explicitly (the
    ``Cookie`` header, if any, is in ``request.headers``) and the session's ``raise_for_status``
    is overridden: every status comes back as a :class:`RawResponse`.

    Raises:
        TransientError: a network error, a timeout, or the body could not be read
            (``status=None``). The message names the host and the exception type only.
    """
    try:
        async with session.post(
            request.url,
            data=dict(request.form),
            headers=dict(request.headers),
            allow_redirects=False,
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            middlewares=(),
        ) as resp:
            body = await _read_limited(resp.content, max_response_bytes)
            return RawResponse(
                status=resp.status,
                headers=resp.headers,
                body=body,
                cookies=_response_cookies(resp),
            )
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        host = endpoint_host(request.url)
        if isinstance(exc, asyncio.TimeoutError):
            what = f"timed out after {timeout:g} s ({type(exc).__name__})"
        else:
            what = type(exc).__name__
            strerror = getattr(exc, "strerror", None)
            if isinstance(strerror, str) and strerror:
                what = f"{what}: {strerror}"
        raise TransientError(
            f"{provider} token endpoint at {host} could not be reached: {what}", status=None
        ) from exc
