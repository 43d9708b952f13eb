"""Reading one cookie out of ``Set-Cookie`` headers ourselves, without a cookie jar.

ERPeasy returns the rotated refresh token only as ``Set-Cookie: refresh_token=…; Domain=…;
Path=/oauth/token; Secure; HttpOnly``. A cookie jar would refuse or scope away such a cookie (wrong
domain in tests, ``Secure`` over plain http, a path that does not match) and would share it with
whatever else uses the session, so the provider parses the headers itself, following the lenient
algorithm of RFC 6265 §5.2 rather than :class:`http.cookies.SimpleCookie`, which gives up on a
whole header at the first character it does not like.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ._headers import http_date

__all__ = ["find_cookie", "is_cookie_value_safe"]

# A comma followed by "name=" starts a new cookie in a header that a proxy folded from several
# Set-Cookie lines. Commas inside "Expires=Wed, 21 Oct 2026 …" are followed by a day number and a
# space, never by "name=", and RFC 6265 forbids commas in cookie values.
_FOLD_SPLIT = re.compile(r",(?=\s*[^\s;,=]+=)")
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")


def is_cookie_value_safe(value: str) -> bool:
    """Whether ``value`` can be sent as a cookie value unquoted (RFC 6265 ``cookie-octet``s)."""
    return _COOKIE_OCTETS.fullmatch(value) is not None


def _is_live(value: str, attributes: dict[str, str], now: float) -> bool:
    """False for a deletion cookie: empty value, ``Max-Age`` ≤ 0, or ``Expires`` in the past."""
    if not value:
        return False
    max_age = attributes.get("max-age")
    if max_age is not None and re.fullmatch(r"-?\d+", max_age):
        # Max-Age wins over Expires (RFC 6265 §5.3 step 3).
        return int(max_age) > 0
    expires = attributes.get("expires")
    if expires is not None:
        when = http_date(expires)
        if when is not None:
            return when > now
    return True


def _parse_cookie(text: str) -> tuple[str, str, dict[str, str]] | None:
    name_value, _, rest = text.partition(";")
    if "=" not in name_value:
        return None
    name, _, value = name_value.partition("=")
    name, value = name.strip(), value.strip()
    if not name:
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    attributes: dict[str, str] = {}
    for part in rest.split(";"):
        key, _, attr_value = part.partition("=")
        key = key.strip().lower()
        if key:
            attributes[key] = attr_value.strip()
    return name, value, attributes


def find_cookie(set_cookie_headers: Iterable[str], name: str, *, now: float) -> str | None:
    """Return the value of cookie ``name`` set by these ``Set-Cookie`` headers.

    Domain, Path, Secure and HttpOnly are ignored on purpose: the provider asked for this
    cookie and uses it itself. Other cookies are skipped. Headers folded into one line by a proxy
    are split again.

    Args:
        set_cookie_headers: the raw ``Set-Cookie`` header values, in order.
        name: the cookie name (case-sensitive).
        now: unix time used to recognise an ``Expires`` date in the past.

    Returns:
        The value of the last ``name`` cookie that is not a deletion (empty value, ``Max-Age`` ≤ 0,
        past ``Expires``), with surrounding double quotes removed, or ``None``.
    """
    found: str | None = None
    for header in set_cookie_headers:
        if not isinstance(header, str):
            continue
        for piece in _FOLD_SPLIT.split(header):
            parsed = _parse_cookie(piece)
            if parsed is None or parsed[0] != name:
                continue
            _, value, attributes = parsed
            if _is_live(value, attributes, now):
                found = value
    return found
