"""What the fake server remembers: token families, refresh tokens and access tokens.

Pure bookkeeping, no HTTP and no awaits, so that checking and rotating a refresh token is atomic
on the event loop: two requests carrying the same refresh token can never both succeed.

A *family* is everything descending from one grant (a password grant or a seeded refresh
token): the refresh tokens that replaced each other by rotation and the access tokens issued
along the way. RFC 9700 §4.14: when a rotated refresh token is used again, the server cannot
tell the thief from the client, so it revokes the whole family.
"""

from __future__ import annotations

import base64
import json
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AccessToken", "Family", "RefreshToken", "Registry"]

RefreshState = Literal["active", "rotated", "revoked"]
RefreshCheck = Literal["ok", "unknown", "reused", "revoked", "expired"]
AccessCheck = Literal["ok", "unknown", "expired", "revoked"]


@dataclass(slots=True, eq=False)
class Family:
    """One grant and all the tokens descending from it."""

    id: int
    user: str
    client_id: str
    revoked: bool = False
    refresh_tokens: list[RefreshToken] = field(default_factory=list)
    access_tokens: list[AccessToken] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class RefreshToken:
    """A refresh token; ``state`` says whether it may still be used."""

    value: str
    family: Family
    issued_at: float
    expires_at: float | None
    state: RefreshState = "active"


@dataclass(slots=True, eq=False)
class AccessToken:
    """An access token and how often the protected endpoint saw it."""

    value: str
    family: Family | None
    client_id: str
    user: str | None
    jti: str
    issued_at: float
    expires_at: float
    revoked: bool = False
    uses: int = 0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt_part(obj: dict[str, Any]) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


class Registry:
    """All tokens a fake server has issued, indexed by value.

    Args:
        flavor: decides what tokens look like (``def50200…`` for Passport, JWTs, opaque).
        rng: randomness for token values; seeded for reproducible values.
        now: the server's wall clock (unix epoch seconds).
        whole_seconds: access tokens expire at ``floor(now) + expires_in``, as with every JWT
            issuer (``exp`` is in whole seconds), up to 1 s before ``now + expires_in``.
    """

    def __init__(
        self,
        flavor: str,
        rng: random.Random,
        now: Callable[[], float],
        *,
        whole_seconds: bool = False,
    ) -> None:
        self._flavor = flavor
        self._rng = rng
        self._now = now
        self._whole_seconds = whole_seconds
        self._families: list[Family] = []
        self._refresh: dict[str, RefreshToken] = {}
        self._access: dict[str, AccessToken] = {}
        self.reuse_detected = 0

    # -- issuing ---------------------------------------------------------------------------

    def new_family(self, user: str, client_id: str) -> Family:
        family = Family(id=len(self._families) + 1, user=user, client_id=client_id)
        self._families.append(family)
        return family

    def issue_refresh(self, family: Family, ttl: float | None) -> RefreshToken:
        now = self._now()
        value = self._refresh_value()
        while value in self._refresh:  # astronomically unlikely, but a seeded rng repeats
            value = self._refresh_value()
        token = RefreshToken(
            value=value,
            family=family,
            issued_at=now,
            expires_at=None if ttl is None else now + ttl,
        )
        family.refresh_tokens.append(token)
        self._refresh[value] = token
        return token

    def issue_access(
        self, family: Family | None, client_id: str, user: str | None, expires_in: float
    ) -> AccessToken:
        now = self._now()
        jti = str(uuid.UUID(bytes=self._rng.randbytes(16), version=4))
        expires_at = (math.floor(now) if self._whole_seconds else now) + expires_in
        value = self._access_value(jti, client_id, user, now, expires_at)
        token = AccessToken(
            value=value,
            family=family,
            client_id=client_id,
            user=user,
            jti=jti,
            issued_at=now,
            expires_at=expires_at,
        )
        if family is not None:
            family.access_tokens.append(token)
        self._access[value] = token
        return token

    def _refresh_value(self) -> str:
        if self._flavor == "keliweb":
            return "def50200" + self._rng.randbytes(64).hex()
        if self._flavor == "erpeasy":
            return f"{_jwt_part({'alg': 'HS256', 'typ': 'JWT'})}.{_b64url(self._rng.randbytes(48))}"
        return _b64url(self._rng.randbytes(32))

    def _access_value(
        self, jti: str, client_id: str, user: str | None, iat: float, exp: float
    ) -> str:
        signature = _b64url(self._rng.randbytes(64))
        if self._flavor == "keliweb":
            header = {"typ": "JWT", "alg": "RS256", "jti": jti}
            claims: dict[str, Any] = {
                "aud": client_id,
                "jti": jti,
                "iat": int(iat),
                "nbf": int(iat),
                "exp": int(exp),
                "sub": user or "",
                "scopes": [],
            }
            return f"{_jwt_part(header)}.{_jwt_part(claims)}.{signature}"
        if self._flavor == "erpeasy":
            claims = {
                "user_name": user,
                "scope": ["read", "write"],
                "exp": int(exp),
                "authorities": ["ROLE_USER"],
                "jti": jti,
                "client_id": client_id,
            }
            return f"{_jwt_part({'alg': 'HS256', 'typ': 'JWT'})}.{_jwt_part(claims)}.{signature}"
        return _b64url(self._rng.randbytes(32))

    # -- checking and rotating -------------------------------------------------------------

    def check_refresh(self, value: str) -> tuple[RefreshCheck, RefreshToken | None]:
        """Classify a presented refresh token; counts (but does not punish) reuse."""
        token = self._refresh.get(value)
        if token is None:
            return "unknown", None
        if token.state == "rotated":
            self.reuse_detected += 1
            return "reused", token
        if token.state == "revoked" or token.family.revoked:
            return "revoked", token
        if token.expires_at is not None and self._now() >= token.expires_at:
            return "expired", token
        return "ok", token

    def rotate(self, token: RefreshToken, ttl: float | None) -> RefreshToken:
        token.state = "rotated"
        return self.issue_refresh(token.family, ttl)

    def revoke_family(self, family: Family) -> None:
        family.revoked = True
        for refresh in family.refresh_tokens:
            if refresh.state == "active":
                refresh.state = "revoked"
        for access in family.access_tokens:
            access.revoked = True

    def revoke(self, value: str, *, family: bool) -> bool:
        refresh = self._refresh.get(value)
        access = self._access.get(value)
        target = refresh.family if refresh is not None else access.family if access else None
        if family and target is not None:
            self.revoke_family(target)
            return True
        if refresh is not None:
            if refresh.state == "active":
                refresh.state = "revoked"
            return True
        if access is not None:
            access.revoked = True
            return True
        return False

    def check_access(self, value: str) -> tuple[AccessCheck, AccessToken | None]:
        token = self._access.get(value)
        if token is None:
            return "unknown", None
        if token.revoked:
            return "revoked", token
        if self._now() >= token.expires_at:
            return "expired", token
        return "ok", token

    def expire_access_tokens(self) -> None:
        now = self._now()
        for token in self._access.values():
            token.expires_at = min(token.expires_at, now)

    def expire_refresh_tokens(self) -> None:
        now = self._now()
        for token in self._refresh.values():
            token.expires_at = now if token.expires_at is None else min(token.expires_at, now)

    def valid_refresh_tokens(self) -> list[str]:
        return [value for value in self._refresh if self.peek_refresh(value)]

    def peek_refresh(self, value: str) -> bool:
        token = self._refresh.get(value)
        return (
            token is not None
            and token.state == "active"
            and not token.family.revoked
            and (token.expires_at is None or self._now() < token.expires_at)
        )

    def access_token(self, value: str) -> AccessToken | None:
        return self._access.get(value)
