"""The :class:`Token` value object."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._secrets import mask

__all__ = [
    "LONE_SURROGATE",
    "MAX_NESTING",
    "UNSTORABLE",
    "RefreshFailure",
    "Token",
    "storable",
    "storable_value",
]

#: A UTF-16 surrogate on its own (a server that cut an emoji in half): no UTF-8 encoder takes it.
LONE_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


class _Unstorable:
    """Marks a value JSON cannot hold (``NaN``, infinity, an overlong integer)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unstorable value>"


UNSTORABLE: Final = _Unstorable()


#: Deeper values are dropped: no token answer nests like that, and it keeps every record within
#: what every reader takes back (Redis's cjson gives up at 1,000 levels) and every stack.
MAX_NESTING: Final = 32


def storable_value(value: Any, _depth: int = 0) -> Any:
    """``value`` as every store can encode it (strict JSON, UTF-8).

    Non-finite floats and :data:`UNSTORABLE` stay :data:`UNSTORABLE` (the caller drops them),
    lone surrogates become U+FFFD, containers are cleaned recursively (dropping such members,
    and containers nested deeper than :data:`MAX_NESTING`); anything that is not JSON data at
    all becomes :data:`UNSTORABLE` too.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else UNSTORABLE
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if not isinstance(value, (list, tuple, Mapping)) or _depth >= MAX_NESTING:
        return UNSTORABLE
    if isinstance(value, Mapping):
        cleaned: dict[str, Any] = {}
        for name, item in value.items():
            clean = storable_value(item, _depth + 1)
            if isinstance(name, str) and clean is not UNSTORABLE:
                cleaned[storable_value(name)] = clean
        return cleaned
    items = []
    for item in value:
        clean = storable_value(item, _depth + 1)
        if clean is not UNSTORABLE:
            items.append(clean)
    return items


def storable(token: Token) -> Token:
    """``token``, or a copy whose ``extra`` every store can encode (see :func:`storable_value`).

    The standard fields are not touched: the parser never lets unstorable ones through.
    """
    try:
        json.dumps(token.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        extra = storable_value(dict(token.extra))
        return dataclasses.replace(token, extra=extra if isinstance(extra, dict) else {})
    return token


def _number(value: Any) -> float | None:
    """``value`` if it is a finite number (not a bool), as a float; else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshFailure:
    """The refreshes of a credential that failed since its last good token, as stored with it.

    Attributes:
        at: unix epoch seconds of the last failed refresh.
        error: its exception class (``"InvalidGrantError"``, ``"TransientError"``, …).
        message: its message (never a secret).
        count: consecutive failed refreshes.
    """

    at: float
    error: str
    message: str
    count: int = 1

    @property
    def needs_reauthorization(self) -> bool:
        """Whether the refresh token (or password) was rejected: a person must re-authorize."""
        return self.error == "InvalidGrantError"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; the inverse of :meth:`from_dict`."""
        return {"at": self.at, "error": self.error, "message": self.message, "count": self.count}

    @classmethod
    def from_dict(cls, data: Any) -> RefreshFailure | None:
        """Read :meth:`to_dict` output; ``None`` for anything else (it is bookkeeping: a
        damaged one must not make the credential unreadable)."""
        if not isinstance(data, Mapping):
            return None
        at, count = _number(data.get("at")), data.get("count", 1)
        error, message = data.get("error"), data.get("message", "")
        if at is None or not isinstance(error, str) or not isinstance(message, str):
            return None
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            count = 1
        return cls(at=at, error=error, message=message, count=count)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Token:
    """An access token together with what is needed to renew it.

    Instances are immutable and safe to share between tasks. ``repr`` and ``str`` mask the access
    and refresh tokens.

    Attributes:
        access_token: the bearer credential sent to the API. Empty for a credential that was only
            seeded with a refresh token and has never been refreshed.
        expires_at: unix epoch seconds at which the access token expires, computed from the moment
            the token request was *sent* (not when the answer arrived).
        token_type: the scheme, normally ``"Bearer"``.
        refresh_token: the refresh token to use next, or ``None``.
        scope: the granted scope, if the server said.
        extra: every other field of the token response (for ERPeasy: ``company_id``,
            ``user_id``, ``jti``, …).
        issued_at: unix epoch seconds at which the token request was sent, or ``None``.
        provider: the name of the provider that issued it (``"keliweb"``, ``"erpeasy"``,
            ``"oauth2"``), informational.
        dpop_key: for a DPoP-bound token (``token_type`` ``"DPoP"``), the private key it is
            bound to, as JWK JSON text (see :class:`~asynctoken.DPoPKey`); ``None`` otherwise.
            A secret: stored with the credential (sealed when the store has a cipher) so that
            every process proves possession with the same key; masked in ``repr``.
        refresh_token_issued_at: unix epoch seconds at which the current refresh token was
            issued, or ``None`` when unknown (seeded by hand).
        refresh_token_expires_at: when the server said the current refresh token dies
            (``refresh_token_expires_in`` or ``refresh_expires_in`` in its answer), or ``None``.
        failure: the refreshes that failed since this token was obtained, or ``None``.
        refresh_at: when the server asked to refresh (unix epoch seconds, from ``refresh_in``
            in its answer), or ``None``: the token turns stale then, if that is before the
            margins say.
    """

    access_token: str
    expires_at: float
    token_type: str = "Bearer"
    refresh_token: str | None = None
    scope: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    issued_at: float | None = None
    provider: str | None = None
    dpop_key: str | None = None
    refresh_token_issued_at: float | None = None
    refresh_token_expires_at: float | None = None
    failure: RefreshFailure | None = None
    refresh_at: float | None = None

    @property
    def authorization(self) -> str:
        """The value of an ``Authorization`` header, e.g. ``"Bearer eyJ…"``."""
        scheme = "Bearer" if self.token_type.lower() == "bearer" else self.token_type
        return f"{scheme} {self.access_token}"

    @property
    def lifetime(self) -> float | None:
        """Seconds between issue and expiry, when the issue time is known."""
        if self.issued_at is None:
            return None
        return self.expires_at - self.issued_at

    def with_refresh_token(self, refresh_token: str | None) -> Token:
        """Return a copy carrying ``refresh_token``."""
        return dataclasses.replace(self, refresh_token=refresh_token)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; the inverse of :meth:`from_dict`.

        ``dpop_key``, the refresh token's times, ``failure`` and ``refresh_at`` are only present
        when set, so
        older versions read the records unchanged.
        """
        data = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "extra": dict(self.extra),
            "issued_at": self.issued_at,
            "provider": self.provider,
        }
        if self.dpop_key is not None:
            data["dpop_key"] = self.dpop_key
        if self.refresh_token_issued_at is not None:
            data["refresh_token_issued_at"] = self.refresh_token_issued_at
        if self.refresh_token_expires_at is not None:
            data["refresh_token_expires_at"] = self.refresh_token_expires_at
        if self.failure is not None:
            data["failure"] = self.failure.to_dict()
        if self.refresh_at is not None:
            data["refresh_at"] = self.refresh_at
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Token:
        """Build a token from :meth:`to_dict` output.

        Unknown keys are ignored so that older versions read newer records; so are damaged
        bookkeeping fields (the refresh token's times, ``failure``), which never make a record
        unreadable.

        Raises:
            ValueError: a field is missing or has the wrong type (the message names the field,
                never its value).
        """
        if not isinstance(data, Mapping):
            raise ValueError("token record is not an object")
        access_token = data.get("access_token")
        if not isinstance(access_token, str):
            raise ValueError("token record: 'access_token' is missing or not a string")
        expires_at = data.get("expires_at")
        if (
            isinstance(expires_at, bool)
            or not isinstance(expires_at, (int, float))
            or not math.isfinite(expires_at)
        ):
            raise ValueError("token record: 'expires_at' is missing or not a number")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str):
            raise ValueError("token record: 'token_type' is not a string")
        for name in ("refresh_token", "scope", "provider", "dpop_key"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"token record: {name!r} is not a string")
        issued_at = data.get("issued_at")
        if issued_at is not None and (
            isinstance(issued_at, bool) or not isinstance(issued_at, (int, float))
        ):
            raise ValueError("token record: 'issued_at' is not a number")
        extra = data.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("token record: 'extra' is not an object")
        return cls(
            access_token=access_token,
            expires_at=float(expires_at),
            token_type=token_type,
            refresh_token=data.get("refresh_token"),
            scope=data.get("scope"),
            extra=dict(extra),
            issued_at=None if issued_at is None else float(issued_at),
            provider=data.get("provider"),
            dpop_key=data.get("dpop_key"),
            refresh_token_issued_at=_number(data.get("refresh_token_issued_at")),
            refresh_token_expires_at=_number(data.get("refresh_token_expires_at")),
            failure=RefreshFailure.from_dict(data.get("failure")),
            refresh_at=_number(data.get("refresh_at")),
        )

    def __repr__(self) -> str:
        return (
            f"Token(access_token={mask(self.access_token)!r}, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at!r}, refresh_token={mask(self.refresh_token)!r}, "
            f"scope={self.scope!r}, extra_keys={sorted(self.extra)!r}, "
            f"provider={self.provider!r}{', dpop_key=…' if self.dpop_key else ''})"
        )

    __str__ = __repr__
