"""When a token expires and when to refresh it, from what an answer says besides ``expires_in``.

* A JWT access token's ``exp`` claim gives its expiry when the answer has no ``expires_in``
  (before ``default_expires_in`` is assumed). The claim is read without verifying the token:
  it only decides *when* to refresh, never whether the token is trusted.
* ``refresh_in`` (Microsoft's identity platform, MSAL): the seconds after which the server wants
  the client to refresh, usually well before expiry. The token turns stale then.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["jwt_lifetime", "refresh_after"]

#: A lifetime beyond this is "does not expire" for every practical purpose (as ``expires_in``).
_MAX_SECONDS: Final = 10 * 365 * 86400.0


def _seconds(value: Any) -> float | None:
    """A positive, finite number of seconds (a JSON number or decimal string), capped."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return min(seconds, _MAX_SECONDS)


def jwt_lifetime(access_token: str, issued_at: float) -> float | None:
    """Seconds from ``issued_at`` to the ``exp`` of ``access_token`` if it is a JWT with one
    in the future; ``None`` otherwise (not a JWT, no ``exp``, or already past)."""
    parts = access_token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return _seconds(exp - issued_at) if math.isfinite(exp) else None


def refresh_after(data: Mapping[str, Any]) -> float | None:
    """The answer's ``refresh_in``: seconds after which to refresh, or ``None``."""
    return _seconds(data.get("refresh_in"))
