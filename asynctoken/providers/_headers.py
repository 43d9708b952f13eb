"""Reading response headers: case-insensitive lookup, ``Retry-After``, HTTP dates."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

__all__ = ["get_header", "http_date", "parse_retry_after"]

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """Return header ``name`` from any mapping, case-insensitively (first value if repeated)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Read ``Retry-After`` as seconds to wait.

    Args:
        headers: the response headers.
        now: unix time to measure an HTTP-date against when the answer has no usable ``Date``
            header (the server's own ``Date`` is preferred: it cancels clock skew).

    Returns:
        Non-negative seconds, or ``None`` when the header is absent, garbage, negative or in the
        past.
    """
    value = get_header(headers, "Retry-After")
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    when = http_date(value)
    if when is None:
        return None
    date_header = get_header(headers, "Date")
    reference = http_date(date_header) if date_header is not None else None
    if reference is None:
        reference = now
    if reference is None:
        return None
    delta = when - reference
    return delta if math.isfinite(delta) and delta >= 0 else None


def http_date(value: str) -> float | None:
    """Parse an HTTP-date (RFC 9110 §5.6.7, any of its three forms) to unix time, or ``None``."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
