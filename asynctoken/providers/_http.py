"""The one place where providers touch the network: URL checks, the request value, sending it."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    "is_loopback_host",
    "send_token_request",
]

DEFAULT_MAX_RESPONSE_BYTES = 1_048_576

# Headers the providers own: letting ``extra_headers`` set them would break the request or smuggle
# a credential past the masking rules.
_RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "content-length", "cookie", "host", "transfer-encoding"}
)
# A header name is an RFC 9110 token; a value may hold no control character but horizontal tab
# (aiohttp refuses the others when the request is sent, which would fail every refresh).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


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
        ssl_context: the TLS context to connect with (mutual TLS: it presents the client
            certificate); ``None`` means aiohttp's default verification.
    """

    url: str
    grant_type: str
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    ssl_context: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        # Names only: every value of interest here is a credential.
        return (
            f"TokenRequest(url={self.url!r}, grant_type={self.grant_type!r}, "
            f"headers={sorted(self.headers)!r}, form={sorted(self.form)!r})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class RawResponse:
    """What came back: status, headers, at most ``max_response_bytes + 1`` body bytes.

    Attributes:
        status: the HTTP status code.
        headers: the response headers (case-insensitive when they come from aiohttp).
        body: the body, possibly cut one byte past the size limit.
        set_cookie: every ``Set-Cookie`` header value, in order, unparsed: several cookies of one
            name can come back (a new one and the deletion of an old one with another ``Path``),
            and no cookie jar was involved, so ``Domain``, ``Path`` and ``Secure`` filtered
            nothing.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    set_cookie: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"RawResponse(status={self.status!r}, body_bytes={len(self.body)})"


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (as in a URL, IPv6 with or without brackets) is this machine, for sure.

    Only the name ``localhost`` (any case) and loopback IP literals (127.0.0.0/8, ``::1``)
    count. ``localhost.`` does not: a fully qualified name skips ``/etc/hosts`` and goes to DNS,
    which may answer with any address; nor does ``localhost.example.com``, ``127.1`` or an
    IPv4-mapped IPv6 address.
    """
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return address in _LOOPBACK_V4
    return address == _LOOPBACK_V6


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
        # Decoding the host (IDNA) is what aiohttp does to connect: a name that does not
        # round-trip must fail here, not at every refresh.
        host = url.host
        has_credentials = url.user is not None or url.password is not None
    except (TypeError, ValueError) as exc:  # UnicodeError is a ValueError
        raise ConfigurationError(f"token_url is not a valid URL ({type(exc).__name__})") from None
    if url.scheme not in ("https", "http") or not host:
        raise ConfigurationError("token_url must be an absolute https:// URL")
    if has_credentials:
        raise ConfigurationError("token_url must not contain credentials (user:password@)")
    if url.scheme == "http" and not allow_insecure_http and not is_loopback_host(url.raw_host):
        raise ConfigurationError(
            f"token_url uses plain http to {host}, which would send client secrets and "
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
    """Validate ``extra_headers``: token names, values without control characters (tab
    allowed), no reserved names."""
    if extra_headers is None:
        return {}
    if not isinstance(extra_headers, Mapping):
        raise ConfigurationError("extra_headers must be a mapping of header names to values")
    headers: dict[str, str] = {}
    for name, value in extra_headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigurationError("extra_headers names and values must be strings")
        if _HEADER_NAME.fullmatch(name) is None:
            raise ConfigurationError(f"extra_headers: invalid header name {name!r}")
        if _HEADER_VALUE_FORBIDDEN.search(value) is not None:
            raise ConfigurationError(
                f"extra_headers: the value of {name!r} contains a control character "
                "(line breaks included)"
            )
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
            ssl=True if request.ssl_context is None else request.ssl_context,
        ) as resp:
            body = await _read_limited(resp.content, max_response_bytes)
            return RawResponse(
                status=resp.status,
                headers=resp.headers,
                body=body,
                set_cookie=tuple(resp.headers.getall("Set-Cookie", ())),
            )
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        error = TransientError(
            f"{provider} token endpoint at {endpoint_host(request.url)} could not be reached: "
            f"{_describe_failure(exc, timeout)}",
            status=None,
        )
    # Raised outside the except block and without a cause: aiohttp's exceptions quote raw header
    # lines (a Set-Cookie with the new refresh token) and hold the request (Basic credentials,
    # the Cookie with the old one) in request_info. The message keeps what is safe of them.
    raise error


def _describe_failure(exc: BaseException, timeout: float) -> str:
    """The type name of a network failure, and its errno as ``os.strerror`` words it.

    Never the exception's own message or ``strerror``: aiohttp puts the URL, its query or a raw
    header line in them.
    """
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out after {timeout:g} s ({name})"
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and not isinstance(errno, bool) and errno > 0:
        try:
            words = os.strerror(errno)
        except ValueError:  # pragma: no cover - out of the platform's range
            words = "unknown error"
        return f"{name}: [Errno {errno}] {words}"
    return name
