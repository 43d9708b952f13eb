"""Pure parsing of token endpoint answers: from status, headers and bytes to a Token or an error.

Nothing here does I/O, so every branch is unit- and property-tested without a server.

JSON is read leniently, because a 200 answer means the server has usually rotated the refresh
token already: throwing the whole answer away loses the credential. ``NaN`` and ``Infinity``
(what Python's own ``json.dumps`` writes), integers too long to be numbers and values nested too
deeply to parse are accepted as JSON; such values are then dropped from :attr:`Token.extra`, and
lone UTF-16 surrogates there become U+FFFD, so that every token can be stored. A body that is not
JSON at all still has its top-level ``refresh_token`` salvaged when that member is intact.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn

from .._errors import (
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    TokenEndpointError,
    TransientError,
)
from .._secrets import mask
from .._token import LONE_SURROGATE, UNSTORABLE, Token, storable_value
from ._headers import get_header, parse_retry_after
from ._timing import jwt_lifetime, refresh_after

__all__ = ["parse_token_response", "sanitize_text", "usable_refresh_token"]

logger = logging.getLogger("asynctoken.providers")

MAX_DESCRIPTION_CHARS = 200
_MAX_ERROR_CODE_CHARS = 64
_MIN_REDACT_CHARS = 4
_STANDARD_FIELDS = frozenset({"access_token", "token_type", "expires_in", "refresh_token", "scope"})
_TRANSIENT_STATUSES = frozenset({408, 429})
# A run of token-alphabet characters this long is probably a credential echoed by the server
# (Spring puts the refresh token in "Invalid refresh token (expired): <token>").
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9._~+/=-]{32,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
# token_type goes into the Authorization header as the auth scheme: an RFC 9110 token.
_AUTH_SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# expires_in as a string: a plain non-negative decimal number, as JSON would write it. Not what
# float() also takes ("3_600", " 36 ", "inf", non-ASCII digits).
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
#: Longer integers are not numbers anyone can use (and int() refuses past 4,300 digits).
_MAX_INT_DIGITS: Final = 1000
#: A lifetime beyond this is "does not expire" for every practical purpose; capped so that
#: expiry times stay representable (dates, timers).
MAX_EXPIRES_IN: Final = 10 * 365 * 86400.0
# A JSON string or a structural character: enough to find the members of an object.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],]')


def sanitize_text(
    text: str, *, redact: Iterable[str] = (), limit: int = MAX_DESCRIPTION_CHARS
) -> str:
    """Make server-supplied text safe for a message: no secrets, no control characters, short.

    Args:
        text: the text (an ``error_description``, a hint).
        redact: exact values to remove (the secrets the request carried).
        limit: the maximum length of the result, an ellipsis included.

    Returns:
        The text with every ``redact`` value replaced by ``"…"``, every long token-like run masked,
        control characters turned into spaces, truncated to ``limit`` characters.
    """
    secrets = sorted({s for s in redact if len(s) >= _MIN_REDACT_CHARS}, key=len, reverse=True)
    text = _redact(_CONTROL.sub(" ", text), secrets)
    text = _TOKEN_LIKE.sub(lambda m: mask(m.group(0)), text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Again: masking and truncation add "…", which could complete a secret that contains one.
    return _redact(text, secrets)


def _redact(text: str, secrets: list[str]) -> str:
    # Secrets shorter than _MIN_REDACT_CHARS are not searched for: replacing every "ab" in a
    # sentence would garble it while protecting nothing a guesser could not find anyway. Each
    # replacement shortens the text, so the loop ends.
    while True:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "…")
                break
        else:
            return text


def _parse_int(text: str) -> Any:
    if len(text) > _MAX_INT_DIGITS:
        return UNSTORABLE
    return int(text)


def _loads(text: str) -> Any:
    """``json.loads`` that also takes ``NaN``/``Infinity`` and integers of any length."""
    return json.loads(text, parse_constant=float, parse_int=_parse_int)


def _load_json(body: bytes) -> Any:
    """Decode a JSON answer leniently (see the module docstring).

    Raises:
        ValueError: not JSON (not UTF-8, or not valid JSON even member by member).
    """
    text = body.decode("utf-8-sig")
    try:
        return _loads(text)
    except RecursionError:  # nested too deeply: the object's other members are still good
        members, intact = _members(text)
        if not intact:
            raise ValueError("JSON nested too deeply") from None
        return members


def _members(text: str) -> tuple[dict[str, Any], bool]:
    """The members of a top-level JSON object, each parsed on its own.

    A member whose value cannot be parsed (cut off, nested too deeply) is left out. Returns the
    members and whether the object was syntactically whole; for a broken one they only serve to
    salvage the refresh token.
    """
    members: dict[str, Any] = {}
    body = text.lstrip()
    if not body.startswith("{"):
        return members, False
    offset = len(text) - len(body)
    depth = 0
    start = offset + 1
    intact = False
    for match in _JSON_TOKEN.finditer(text, offset):
        char = match.group()[0]
        if char == '"':
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                _add_member(members, text[start : match.start()])
                intact = char == "}" and not text[match.end() :].strip()
                break
        elif depth == 1:  # a comma between members
            _add_member(members, text[start : match.start()])
            start = match.end()
    else:
        _add_member(members, text[start:])
    return members, intact


def _add_member(members: dict[str, Any], text: str) -> None:
    name, colon, value = text.partition(":")
    if not colon:
        return
    try:
        key = json.loads(name)
        if isinstance(key, str) and key not in members:
            members[key] = _loads(value)
    except (ValueError, RecursionError):
        return


def _storable_extra(ctx: _Context, data: Mapping[str, Any]) -> dict[str, Any]:
    """The non-standard fields of an answer, made storable; what changed is logged by name."""
    extra: dict[str, Any] = {}
    changed: list[str] = []
    for name, value in data.items():
        if name in _STANDARD_FIELDS:
            continue
        clean = storable_value(value)
        if clean is UNSTORABLE or clean != value:
            changed.append(name)
        if clean is not UNSTORABLE:
            extra[storable_value(name)] = clean
    if changed:
        logger.warning(
            "%s: answer fields %s held values that cannot be stored (NaN, infinite or "
            "overlong numbers, broken Unicode): dropped or replaced in Token.extra",
            ctx.who,
            ", ".join(sorted(sanitize_text(repr(n), limit=60) for n in changed)),
        )
    return extra


def _content_type(headers: Mapping[str, str]) -> str:
    value = get_header(headers, "Content-Type") or ""
    media_type = value.split(";", 1)[0].strip().lower()
    return sanitize_text(media_type, limit=60) or "none"


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


class _Context:
    """What an error message needs to know about the request; bundled to keep signatures short."""

    __slots__ = ("endpoint", "grant_type", "provider", "redact", "refresh_token", "status")

    def __init__(
        self,
        *,
        provider: str,
        endpoint: str | None,
        grant_type: str,
        status: int,
        redact: tuple[str, ...],
    ) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.grant_type = grant_type
        self.status = status
        self.redact = redact
        # A usable refresh token of a success answer, once read: a malformed answer that
        # carries one still rotated the credential at the server (MalformedResponseError).
        self.refresh_token: str | None = None

    @property
    def who(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.provider} token endpoint{where}"

    def malformed(self, reason: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"{self.who} answered HTTP {self.status} without a usable token: {reason}",
            status=self.status,
            reason=reason,
            refresh_token=self.refresh_token,
        )


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    issued_at: float,
    provider: str = "oauth2",
    grant_type: str = "refresh_token",
    endpoint: str | None = None,
    default_expires_in: float | None = None,
    max_response_bytes: int = 1_048_576,
    redact: Iterable[str] = (),
) -> Token:
    """Turn one token endpoint answer into a :class:`Token` or a typed error.

    Args:
        status: the HTTP status code.
        headers: the response headers (only ``Content-Type``, ``Retry-After`` and ``Date`` are
            read; a case-insensitive mapping is best, a plain dict works).
        body: the response body, at most ``max_response_bytes + 1`` bytes.
        issued_at: unix time the request was sent; ``expires_at = issued_at + expires_in``.
        provider: provider name, recorded on the token and used in messages.
        grant_type: the grant that was used; selects the wording of ``invalid_grant`` errors.
        endpoint: the endpoint host, for messages.
        default_expires_in: lifetime to assume when the answer has no ``expires_in`` and the
            access token is not a JWT with an ``exp`` claim (read without verification, only
            for timing). A ``refresh_in`` sets :attr:`Token.refresh_at`.
        max_response_bytes: a longer body is a :class:`MalformedResponseError` on success and is
            ignored on error statuses.
        redact: secret values the request carried, removed from messages.

    Returns:
        The token. ``refresh_token`` is ``None`` when the answer carried none.

    Raises:
        InvalidGrantError: ``invalid_grant`` (any status), Passport's ``invalid_request`` "The
            refresh token is invalid.", ``invalid_token`` (Spring, expired refresh token) or
            ``invalid_credentials`` (old Passport, wrong password).
        InvalidClientError: ``invalid_client`` with 400 or 401, or a 401 whose Basic challenge or
            Spring ``unauthorized`` code rejects the client credentials.
        TransientError: 5xx, 408, 429, or ``temporarily_unavailable``; ``retry_after`` is set
            from ``Retry-After``.
        TokenEndpointError: any other non-2xx answer (other 4xx, redirects).
        MalformedResponseError: a 2xx answer that is not a usable token response. (A 2xx
            answer with an ``error`` code and no ``access_token`` is mapped like a 400.) When
            the answer is a JSON object with a non-empty string ``refresh_token``, the error's
            ``refresh_token`` attribute holds it: the server has probably rotated already.
    """
    ctx = _Context(
        provider=provider,
        endpoint=endpoint,
        grant_type=grant_type,
        status=status,
        redact=tuple(s for s in redact if s),
    )
    oversized = len(body) > max_response_bytes
    if not 200 <= status < 300:
        data: Any = None
        if not oversized:
            try:
                data = _load_json(body)
            except ValueError:
                data = None
        _raise_error(ctx, headers, data if isinstance(data, dict) else None, issued_at)
    if oversized:
        raise ctx.malformed(f"response body larger than {max_response_bytes} bytes")
    content_type = _content_type(headers)
    try:
        data = _load_json(body)
    except ValueError:
        # The server may well have rotated: keep the refresh token if its member is intact.
        members, _ = _members(body.decode("utf-8", "replace"))
        ctx.refresh_token = _storable_refresh_token(members.get("refresh_token"))
        if _is_json_type(content_type):
            raise ctx.malformed("invalid JSON") from None
        raise ctx.malformed(f"not JSON (content type {content_type})") from None
    if not isinstance(data, dict):
        raise ctx.malformed("JSON is not an object")
    ctx.refresh_token = _storable_refresh_token(data.get("refresh_token"))
    if "access_token" not in data and isinstance(data.get("error"), str) and data["error"]:
        # Some servers (GitHub among them) answer errors with 200: the error code still decides.
        _raise_error(ctx, headers, data, issued_at)
    return _build_token(ctx, data, issued_at=issued_at, default_expires_in=default_expires_in)


def usable_refresh_token(value: object) -> str | None:
    """``value`` if it can be used as a refresh token (a non-empty string), else ``None``."""
    return value if isinstance(value, str) and value else None


def _storable_refresh_token(value: object) -> str | None:
    """A usable refresh token that can also be stored and sent (no lone surrogates)."""
    token = usable_refresh_token(value)
    if token is None or LONE_SURROGATE.search(token):
        return None
    return token


def _optional_str(ctx: _Context, data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ctx.malformed(f"{name} is not a string")
    return value or None


def _expires_in(ctx: _Context, data: Mapping[str, Any], default: float | None) -> float:
    raw = data.get("expires_in")
    if raw is UNSTORABLE:
        return MAX_EXPIRES_IN  # an integer of 1,000+ digits: as good as forever
    if raw is None:
        value = None
    elif isinstance(raw, str):
        if _DECIMAL.fullmatch(raw) is None:
            raise ctx.malformed("expires_in is not a number")
        value = float(raw)
    elif isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ctx.malformed("expires_in is not a number")
    else:
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond the float range: as good as forever
            value = math.inf
    if value is None or value == 0:
        # 0 is what some servers send for "does not expire" or "unknown": as if it were absent.
        if default is None:
            raise ctx.malformed("missing expires_in" if value is None else "expires_in is 0")
        return default
    if math.isnan(value) or value < 0:
        raise ctx.malformed("expires_in is negative or not finite")
    return min(value, MAX_EXPIRES_IN)


def _build_token(
    ctx: _Context, data: dict[str, Any], *, issued_at: float, default_expires_in: float | None
) -> Token:
    access_token = data.get("access_token")
    if access_token is None:
        raise ctx.malformed("missing access_token")
    if not isinstance(access_token, str):
        raise ctx.malformed("access_token is not a string")
    if not access_token:
        raise ctx.malformed("empty access_token")
    # It goes into an Authorization header verbatim: only visible ASCII can travel there safely.
    if not all("\x21" <= c <= "\x7e" for c in access_token):
        raise ctx.malformed("access_token contains characters not allowed in an HTTP header")
    if data.get("expires_in") in (None, 0, "0"):  # a JWT's exp, before the default lifetime
        default_expires_in = jwt_lifetime(access_token, issued_at) or default_expires_in
    expires_in = _expires_in(ctx, data, default_expires_in)
    expires_at = issued_at + expires_in
    refresh_in = refresh_after(data)
    if not math.isfinite(expires_at):
        raise ctx.malformed("expires_in is too large")
    token_type = _optional_str(ctx, data, "token_type") or "Bearer"
    if _AUTH_SCHEME.fullmatch(token_type) is None:
        # It becomes the Authorization header's scheme: a line break there is header injection.
        raise ctx.malformed("token_type is not a valid auth scheme")
    refresh_token = _optional_str(ctx, data, "refresh_token")
    if refresh_token is not None and LONE_SURROGATE.search(refresh_token):
        raise ctx.malformed("refresh_token contains broken Unicode (a lone surrogate)")
    raw_scope = data.get("scope")
    if isinstance(raw_scope, list) and all(isinstance(s, str) for s in raw_scope):
        # Some servers send the scope as a JSON list: it is the same space-separated scope.
        scope = " ".join(raw_scope) or None
    else:
        scope = _optional_str(ctx, data, "scope")
    if scope is not None:
        scope = storable_value(scope)
    extra = _storable_extra(ctx, data)
    return Token(
        access_token=access_token,
        expires_at=expires_at,
        token_type=token_type,
        refresh_token=refresh_token,
        scope=scope,
        extra=extra,
        issued_at=issued_at,
        provider=ctx.provider,
        refresh_at=None if refresh_in is None else issued_at + refresh_in,
    )


def _error_fields(ctx: _Context, data: dict[str, Any] | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    raw_error = data.get("error")
    error = None
    if isinstance(raw_error, str) and raw_error:
        error = sanitize_text(raw_error, redact=ctx.redact, limit=_MAX_ERROR_CODE_CHARS)
    parts = []
    for key in ("error_description", "message"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            parts.append(value)
            break
    hint = data.get("hint")
    if isinstance(hint, str) and hint.strip():
        parts.append(f"(hint: {hint})")
    description = sanitize_text(" ".join(parts), redact=ctx.redact) if parts else None
    return error or None, description or None


def _is_refresh_token_rejection(code: str | None, description: str | None) -> bool:
    # league/oauth2-server < 8.3 (Laravel Passport): 401 invalid_request "The refresh token is
    # invalid." with a hint such as "Token has been revoked" or "Token has expired".
    return code == "invalid_request" and "refresh token is invalid" in (description or "").lower()


def _raise_error(
    ctx: _Context, headers: Mapping[str, str], data: dict[str, Any] | None, issued_at: float
) -> NoReturn:
    status = ctx.status
    error, description = _error_fields(ctx, data)
    summary = f"HTTP {status}" + (f" {error}" if error else "")
    if description:
        summary += f": {description}"
    elif data is None and not 300 <= status < 400:
        summary += f" (content type {_content_type(headers)})"
    attrs: dict[str, Any] = {"status": status, "error": error, "description": description}
    if 200 <= status < 300:
        status = 400  # an error body with a success status: judge it as the 400 it should be
    # Error codes are compared case-insensitively (Spring answers "Unauthorized"); the error
    # attribute keeps the server's spelling.
    code = error.lower() if error is not None else None

    if code in ("invalid_grant", "invalid_credentials") or (
        status in (400, 401)
        and (code == "invalid_token" or _is_refresh_token_rejection(code, description))
    ):
        raise InvalidGrantError(f"{ctx.who} answered {summary}; {_grant_advice(ctx)}", **attrs)
    if code == "temporarily_unavailable" or status >= 500 or status in _TRANSIENT_STATUSES:
        raise TransientError(
            f"{ctx.who} answered {summary} (temporary)",
            status=ctx.status,
            retry_after=parse_retry_after(headers, now=issued_at),
        )
    if status in (400, 401) and (
        code in ("invalid_client", "unauthorized")
        or (status == 401 and code is None and _basic_challenge(headers))
    ):
        raise InvalidClientError(
            f"{ctx.who} answered {summary}; the client id or client secret was rejected", **attrs
        )
    if 300 <= status < 400:
        raise TokenEndpointError(
            f"{ctx.who} answered {summary}, a redirect (not followed: token requests carry "
            "credentials); check token_url",
            **attrs,
        )
    raise TokenEndpointError(f"{ctx.who} answered {summary}", **attrs)


def _basic_challenge(headers: Mapping[str, str]) -> bool:
    challenge = get_header(headers, "WWW-Authenticate") or ""
    return challenge.strip().lower().startswith("basic")


def _grant_advice(ctx: _Context) -> str:
    if ctx.grant_type == "password":
        if ctx.provider == "erpeasy":
            return "the email/password/company was rejected: check them"
        return "the username/password was rejected: check them"
    if ctx.grant_type == "refresh_token":
        return (
            "the refresh token is expired, revoked or already used: re-authorize "
            "(seed a new refresh token or configure the password grant)"
        )
    return "the grant was rejected: check the client registration"
