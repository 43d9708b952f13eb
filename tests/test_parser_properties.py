"""Property tests for the pure parsers: whatever a server sends, only typed outcomes come back."""

from __future__ import annotations

import json
import math
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asynctoken import (
    InvalidGrantError,
    MalformedResponseError,
    Token,
    TokenEndpointError,
    TransientError,
)
from asynctoken.providers._headers import parse_retry_after
from asynctoken.providers._parse import (
    MAX_DESCRIPTION_CHARS,
    parse_token_response,
    sanitize_text,
)

TYPED = (TokenEndpointError, TransientError, MalformedResponseError)
STANDARD = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

statuses = st.one_of(
    st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 429, 500, 502, 503]),
    st.integers(min_value=100, max_value=599),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/html", "text/plain", ""]
)
header_values = st.text(max_size=40)
headers = st.fixed_dictionaries(
    {"Content-Type": content_types},
    optional={
        "Retry-After": header_values,
        "Date": header_values,
        "WWW-Authenticate": header_values,
    },
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
# Objects that look like token answers, valid or not, so the deep branches get exercised.
token_like = st.fixed_dictionaries(
    {},
    optional={
        "access_token": json_values | st.text(alphabet=string.printable, max_size=30),
        "expires_in": json_values | st.sampled_from(["3600", "-1", "1e999", "nan", " 60 "]),
        "refresh_token": json_values,
        "token_type": json_values,
        "scope": json_values,
        "error": st.sampled_from(
            ["invalid_grant", "invalid_client", "invalid_request", "temporarily_unavailable"]
        )
        | json_values,
        "error_description": json_values,
        "hint": json_values,
    },
)


def _parse(status: int, hdrs: dict[str, str], body: bytes) -> Token | Exception:
    try:
        return parse_token_response(status, hdrs, body, issued_at=1_000.0, max_response_bytes=4096)
    except TYPED as exc:
        return exc


def _check_outcome(status: int, outcome: Token | Exception) -> None:
    if isinstance(outcome, Token):
        assert 200 <= status < 300
        assert outcome.access_token
        assert math.isfinite(outcome.expires_at)
        assert outcome.expires_at >= 1_000.0
    elif isinstance(outcome, MalformedResponseError):
        assert 200 <= status < 300
        assert outcome.reason
        assert outcome.status == status
    elif isinstance(outcome, TransientError):
        assert outcome.retry_after is None or (
            math.isfinite(outcome.retry_after) and outcome.retry_after >= 0
        )
    else:
        assert isinstance(outcome, TokenEndpointError)
        assert outcome.status == status
        assert outcome.description is None or len(outcome.description) <= MAX_DESCRIPTION_CHARS


@SETTINGS
@given(status=statuses, hdrs=headers, body=st.binary(max_size=300))
def test_arbitrary_bytes_give_a_token_or_a_typed_error(
    status: int, hdrs: dict[str, str], body: bytes
) -> None:
    _check_outcome(status, _parse(status, hdrs, body))


@SETTINGS
@given(status=statuses, hdrs=headers, value=json_values | token_like)
def test_arbitrary_json_gives_a_token_or_a_typed_error(
    status: int, hdrs: dict[str, str], value: Any
) -> None:
    _check_outcome(status, _parse(status, hdrs, json.dumps(value).encode()))


@SETTINGS
@given(status=st.integers(min_value=100, max_value=599), hdrs=headers)
def test_invalid_grant_is_always_invalid_grant(status: int, hdrs: dict[str, str]) -> None:
    outcome = _parse(status, hdrs, b'{"error": "invalid_grant", "error_description": "x"}')
    assert isinstance(outcome, InvalidGrantError)
    assert outcome.status == status
    assert outcome.error == "invalid_grant"


token_chars = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60
)
extra_keys = st.text(min_size=1, max_size=12).filter(lambda k: k not in STANDARD)


@SETTINGS
@given(
    access_token=token_chars,
    expires_in=st.integers(min_value=1, max_value=10**8)
    | st.floats(min_value=1e-3, max_value=1e8, allow_nan=False),
    refresh_token=st.none() | st.text(min_size=1, max_size=60),
    token_type=st.none() | st.sampled_from(["Bearer", "bearer", "MAC"]),
    scope=st.none() | st.text(min_size=1, max_size=30),
    extra=st.dictionaries(extra_keys, json_values, max_size=5),
    issued_at=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    as_string=st.booleans(),
)
def test_valid_answers_round_trip(
    access_token: str,
    expires_in: float,
    refresh_token: str | None,
    token_type: str | None,
    scope: str | None,
    extra: dict[str, Any],
    issued_at: float,
    as_string: bool,
) -> None:
    answer: dict[str, Any] = {
        **extra,
        "access_token": access_token,
        "expires_in": repr(expires_in) if as_string else expires_in,
    }
    for name, value in (
        ("refresh_token", refresh_token),
        ("token_type", token_type),
        ("scope", scope),
    ):
        if value is not None:
            answer[name] = value
    token = parse_token_response(
        200,
        {"Content-Type": "application/json"},
        json.dumps(answer).encode(),
        issued_at=issued_at,
        provider="keliweb",
    )
    assert token.access_token == access_token
    assert token.expires_at == issued_at + float(expires_in)
    assert token.issued_at == issued_at
    assert token.refresh_token == refresh_token
    assert token.token_type == (token_type or "Bearer")
    assert token.scope == scope
    assert token.provider == "keliweb"
    assert dict(token.extra) == extra
    assert Token.from_dict(json.loads(json.dumps(token.to_dict()))) == token


@SETTINGS
@given(
    text=st.text(max_size=400),
    secrets=st.lists(st.text(min_size=4, max_size=30), max_size=3),
    data=st.data(),
)
def test_sanitize_never_leaks_a_secret(text: str, secrets: list[str], data: Any) -> None:
    # Plant the secrets in the text to give redaction something to do.
    for secret in secrets:
        cut = data.draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:cut] + secret + text[cut:]
    out = sanitize_text(text, redact=secrets)
    assert len(out) <= MAX_DESCRIPTION_CHARS
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    for secret in secrets:
        assert secret not in out


@SETTINGS
@given(value=st.text(max_size=60), date=st.none() | st.text(max_size=40))
def test_retry_after_is_none_or_a_sane_delay(value: str, date: str | None) -> None:
    hdrs = {"Retry-After": value} if date is None else {"Retry-After": value, "Date": date}
    delay = parse_retry_after(hdrs, now=1_700_000_000.0)
    assert delay is None or (math.isfinite(delay) and delay >= 0)
