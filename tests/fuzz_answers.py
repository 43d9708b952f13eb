"""The answer space of the rotation fuzzer: what a hostile-but-realistic token endpoint says.

Each :class:`Plan` queues exactly one entry on a :class:`FakeOAuthServer` (imported by name:
tests/ is not a package), so plans and token requests pair up in arrival order. Classes:

* ``valid``: the endpoint's own answer.
* ``odd``: the rotated answer with odd-but-usable fields (NaN, Infinity, 1e999, integers of
  thousands of digits, very deep nesting, lone UTF-16 surrogates, odd ``expires_in``,
  ``token_type``, ``scope``, unknown fields, other 2xx statuses and content types).
* ``unusable``: the rotated answer made unusable (no ``access_token``, a bad ``expires_in`` or
  ``token_type``), its new refresh token still in it.
* ``broken-json``: the rotated answer's JSON broken around an intact new refresh token.
* ``cookies`` (ERPeasy): the rotated ``Set-Cookie`` among deletions, expired and foreign
  cookies, folded into one line or not, with a JSON field that may disagree.
* ``status``: a canned answer of any status class, with or without an OAuth error body or
  ``Retry-After``, HTML or empty (nothing rotates).
* ``disconnect-before``: the connection dropped before the endpoint decided.
* ``slow``: the rotated answer, slow to decide or slow in its body, within the client timeout.
* ``lost``: the rotated answer lost in flight: dropped, cut, or slower than the client timeout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from asynctoken.testing import FakeOAuthServer, Flavor, TokenAnswer

__all__ = ["CLIENT_TIMEOUT", "Plan", "Raw", "emit", "plans"]

#: The providers' timeout in the fuzzer (real seconds): a "beyond the timeout" answer costs it.
CLIENT_TIMEOUT = 0.25
_BEYOND = CLIENT_TIMEOUT + 0.1
_STANDARD = frozenset({"access_token", "token_type", "expires_in", "refresh_token", "scope"})
_PAST = "Thu, 01 Jan 1970 00:00:00 GMT"
_FUTURE = "Fri, 01 Jan 2100 00:00:00 GMT"


@dataclass(frozen=True)
class Plan:
    """One queued server behaviour: its class (for the figures), what it is, how to queue it,
    and whether a client may rightly try again after it (a 5xx, 408, 429,
    ``temporarily_unavailable``, a dropped or lost answer)."""

    cls: str
    what: str
    inject: Callable[[FakeOAuthServer], None] = field(repr=False, compare=False)
    transient: bool = False

    def __repr__(self) -> str:
        return f"<{self.cls}: {self.what}>"


class Raw(str):
    """JSON text written verbatim by :func:`emit` (``NaN``, ``1e999``, deep nesting...)."""

    def __repr__(self) -> str:
        text = str(self)
        return f"Raw({text[:12]!r}{'…' if len(text) > 12 else ''} len={len(text)})"


def emit(value: Any) -> str:
    """JSON text of ``value``; :class:`Raw` parts go in verbatim, lone surrogates as escapes."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{emit(str(k))}: {emit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(emit(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: "\ud83d" is written as the escape


_MISSING = Raw("<missing>")


def _apply(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for name, value in changes.items():
        if value is _MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _on_success(
    change: Callable[[TokenAnswer], TokenAnswer],
) -> Callable[[TokenAnswer], TokenAnswer]:
    """Apply ``change`` to answers the endpoint issued a token with; pass error answers on."""

    def rewrite(answer: TokenAnswer) -> TokenAnswer:
        return change(answer) if answer.access_token is not None else answer

    return rewrite


def _rewrite(cls: str, what: str, change: Callable[[TokenAnswer], TokenAnswer]) -> Plan:
    return Plan(cls, what, lambda server: server.rewrite_next(_on_success(change)))


# -- odd values ------------------------------------------------------------------------------

_ODD_SCALARS = st.sampled_from(
    [
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
        Raw("1e999"),
        Raw("-1e999"),
        Raw("1e-999"),
        "Empresa Ltda \ud83d",  # an emoji cut in half by a Java server
        "\udc00",
        "\ud83d\ud83d",
        "ok é 😀",
        "",
        None,
        True,
        -0.0,
        2**63,
        Raw("1.0e+2"),
    ]
)
_HUGE_INT = st.integers(4_301, 20_000).map(lambda n: Raw("9" * n))
_DEEP_LIST = st.integers(1_001, 50_000).map(lambda d: Raw("[" * d + "]" * d))
_DEEP_OBJECT = st.integers(1_001, 20_000).map(lambda d: Raw('{"a": ' * d + "0" + "}" * d))
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
ODD_VALUES = st.one_of(_ODD_SCALARS, _HUGE_INT, _DEEP_LIST, _DEEP_OBJECT, _PLAIN)
FIELD_NAMES = st.sampled_from(
    ["company_name", "ratio", "id_token", "refresh_token_expires_in", "\ud83d", "user_id", ""]
) | st.text(min_size=1, max_size=8).filter(lambda k: k not in _STANDARD)

USABLE_EXPIRES_IN = st.sampled_from(
    [
        0,
        1,
        2,
        30,
        3600,
        3600.5,
        86_400 * 365 * 100,
        9_223_372_036_854_775_807,
        Raw("1e300"),
        Raw("3.6e3"),
        "3600",
        "0",
        "59.5",
    ]
)
BAD_EXPIRES_IN = st.sampled_from(
    [
        "soon",
        -1,
        -0.5,
        True,
        [3600],
        {"s": 1},
        Raw("NaN"),
        Raw("Infinity"),
        Raw("1e999"),
        Raw("9" * 400),
        "",
        "1_000",
        " 36 ",
        "inf",
        "٣٦٠٠",
    ]
)
USABLE_TOKEN_TYPES = st.sampled_from(
    ["bearer", "BEARER", "Bearer", "MAC", "DPoP", "", None, _MISSING]
)
BAD_TOKEN_TYPES = st.sampled_from(["Bearer token", "Bearer\r\nX-Injected: 1", 42, ["Bearer"]])
SCOPES = st.sampled_from(
    ["read write", "", None, _MISSING, ["read", "write"], 42, {"a": 1}, "é \ud83d", Raw("NaN")]
)
BAD_ACCESS_TOKENS = st.sampled_from([_MISSING, None, 42, "", "tok en", "tök", ["a"], Raw("1e999")])


@st.composite
def _field_changes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["extra", "expires_in", "token_type", "scope", "missing_expires"]))
    if kind == "extra":
        return {draw(FIELD_NAMES): draw(ODD_VALUES)}
    if kind == "expires_in":
        return {"expires_in": draw(USABLE_EXPIRES_IN)}
    if kind == "token_type":
        return {"token_type": draw(USABLE_TOKEN_TYPES)}
    if kind == "scope":
        return {"scope": draw(SCOPES)}
    return {"expires_in": _MISSING}  # usable only where the provider has a default


def _odd_answer(
    changes: dict[str, Any], status: int, content_type: str | None, bom: bool
) -> Callable[[TokenAnswer], TokenAnswer]:
    def change(answer: TokenAnswer) -> TokenAnswer:
        text = emit(_apply(answer.json(), changes))
        return answer.with_body(("\ufeff" if bom else "") + text, content_type).replace(
            status=status
        )

    return change


@st.composite
def odd_plans(draw: st.DrawFn, flavor: Flavor) -> Plan:
    changes: dict[str, Any] = {}
    for change in draw(st.lists(_field_changes(), min_size=1, max_size=3)):
        changes.update(change)
    if flavor != "oauth2" and changes.get("expires_in") is _MISSING:
        del changes["expires_in"]  # without a default that is an unusable answer
    status = draw(st.sampled_from([200, 200, 200, 201, 203]))
    content_type = draw(
        st.sampled_from([None, "application/json;charset=UTF-8", "text/plain", "text/html"])
    )
    bom = draw(st.booleans())
    what = f"{changes!r} status={status} type={content_type} bom={bom}"
    return _rewrite("odd", what, _odd_answer(changes, status, content_type, bom))


@st.composite
def unusable_plans(draw: st.DrawFn, flavor: Flavor) -> Plan:
    kind = draw(st.sampled_from(["access_token", "expires_in", "token_type", "no_expires"]))
    if kind == "access_token":
        changes = {"access_token": draw(BAD_ACCESS_TOKENS)}
    elif kind == "expires_in":
        changes = {"expires_in": draw(BAD_EXPIRES_IN)}
    elif kind == "token_type":
        changes = {"token_type": draw(BAD_TOKEN_TYPES)}
    else:
        changes = {"expires_in": _MISSING} if flavor != "oauth2" else {"access_token": _MISSING}
    for change in draw(st.lists(_field_changes(), max_size=2)):
        changes = {**change, **changes}
    return _rewrite("unusable", repr(changes), _odd_answer(changes, 200, None, False))


def _broken(mode: str, cut: int, garbage: str) -> Callable[[TokenAnswer], TokenAnswer]:
    def change(answer: TokenAnswer) -> TokenAnswer:
        data = answer.json()
        if "refresh_token" in data:  # put it first, so what follows may break
            data = {"refresh_token": data.pop("refresh_token"), **data}
        text = emit(data)
        if mode == "truncated":
            end = text.index('"', text.index(": ") + 3) + 1 if "refresh_token" in data else 1
            text = text[: end + cut]
        elif mode == "trailing":
            text += garbage
        elif mode == "trailing_comma":
            text = text[:-1] + ", }"
        elif mode == "single_quotes":
            text = text[:-1] + ", 'note': 'x'}"
        elif mode == "comment":
            text = text[:-1] + " /* issued */}"
        else:  # unterminated string at the end
            text = text[:-1] + ', "note": "abc'
        return answer.with_body(text)

    return change


@st.composite
def broken_json_plans(draw: st.DrawFn) -> Plan:
    mode = draw(
        st.sampled_from(
            ["truncated", "trailing", "trailing_comma", "single_quotes", "comment", "unterminated"]
        )
    )
    cut = draw(st.integers(0, 20))
    garbage = draw(
        st.sampled_from(["<", " <html></html>", "}", ",", "\x00", "{}", " // ok", "\n\n"])
    )
    return _rewrite(
        "broken-json", f"{mode} cut={cut} garbage={garbage!r}", _broken(mode, cut, garbage)
    )


# -- ERPeasy cookies -------------------------------------------------------------------------


def _cookies(
    live_form: str, extras: list[str], position: int, fold: str, json_field: str
) -> Callable[[TokenAnswer], TokenAnswer]:
    def change(answer: TokenAnswer) -> TokenAnswer:
        new = answer.refresh_token or ""
        old = answer.presented_refresh_token or ""
        live = live_form.format(new=new)
        values = [extra.format(old=old) for extra in extras]
        values.insert(min(position, len(values)), live)
        if fold == "all":
            lines = [", ".join(values)]
        elif fold == "pairs":
            lines = [", ".join(values[i : i + 2]) for i in range(0, len(values), 2)]
        else:
            lines = values
        out = answer.with_headers([("Set-Cookie", line) for line in lines], drop=["Set-Cookie"])
        if json_field:
            data = answer.json()
            data["refresh_token"] = {"old": old, "new": new}.get(json_field, json_field)
            out = out.with_body(emit(data))
        return out

    return change


_LIVE_FORMS = [
    "refresh_token={new}; Domain=api.erpeasy.compels.net; Path=/oauth/token; Secure; HttpOnly",
    "refresh_token={new}; Path=/oauth/token; Max-Age=864000; Secure; HttpOnly",
    "refresh_token={new}; path=/oauth/token; max-age=600; secure; httponly",
    f"refresh_token={{new}}; Path=/oauth/token; Expires={_FUTURE}; HttpOnly",
    "refresh_token={new}; Path=/; HttpOnly",
    "refresh_token={new}",
]
_EXTRA_COOKIES = [
    "refresh_token=; Path=/; Max-Age=0",
    f"refresh_token=deleted; Path=/; Expires={_PAST}",
    f"refresh_token=; Domain=api.erpeasy.compels.net; Path=/; Expires={_PAST}; Max-Age=0",
    f"refresh_token={{old}}; Path=/oauth/token; Expires={_PAST}",
    "refresh_token={old}; Path=/oauth/token; Max-Age=-1",
    "refresh_token={old}; Path=/api",
    "JSESSIONID=0A1B2C3D4E; Path=/; HttpOnly",
    "XSRF-TOKEN=8f1c; Path=/",
]


@st.composite
def cookie_plans(draw: st.DrawFn) -> Plan:
    live = draw(st.sampled_from(_LIVE_FORMS))
    extras = draw(st.lists(st.sampled_from(_EXTRA_COOKIES), max_size=4))
    position = draw(st.integers(0, len(extras)))
    fold = draw(st.sampled_from(["none", "none", "all", "pairs"]))
    json_field = draw(st.sampled_from(["", "", "old", "new", "bogus-json-refresh-token"]))
    what = f"live={live!r} extras={extras!r} at={position} fold={fold} json={json_field!r}"
    return _rewrite("cookies", what, _cookies(live, extras, position, fold, json_field))


# -- canned answers (nothing rotates) --------------------------------------------------------

_HTML = "<!DOCTYPE html><html><body><h1>{status}</h1><p>nginx</p></body></html>"
_ERRORS = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "temporarily_unavailable",
    "server_error",
    "access_denied",
    "Unauthorized",
    "",
]


@st.composite
def status_plans(draw: st.DrawFn) -> Plan:
    status = draw(
        st.sampled_from(
            [
                200,
                201,
                204,
                301,
                302,
                303,
                307,
                308,
                400,
                401,
                403,
                404,
                405,
                408,
                409,
                410,
                418,
                422,
                429,
                451,
                500,
                501,
                502,
                503,
                504,
                599,
            ]
        )
    )
    body_kind = draw(st.sampled_from(["oauth", "oauth", "html", "empty", "text", "garbage"]))
    headers: dict[str, str] = {}
    content_type = "application/json"
    body: str | bytes
    error = None
    if body_kind == "oauth":
        error = draw(st.sampled_from(_ERRORS))
        fields: dict[str, Any] = {"error": error}
        if draw(st.booleans()):
            fields["error_description"] = draw(
                st.sampled_from(["Bad request.", "The refresh token is invalid.", ""])
            )
        if draw(st.booleans()):
            fields["hint"] = "Token has been revoked"
        body = json.dumps(fields)
    elif body_kind == "html":
        body, content_type = _HTML.format(status=status), "text/html"
    elif body_kind == "empty":
        body = ""
    elif body_kind == "text":
        body, content_type = "Service Unavailable", "text/plain"
    else:
        body = b"\x00\xff\xfe{"
    if 300 <= status < 400:
        headers["Location"] = "https://login.example.com/oauth/token"
    if status == 401 and draw(st.booleans()):
        headers["WWW-Authenticate"] = 'Basic realm="oauth2/client"'
    transient = status >= 500 or status in (408, 429) or error == "temporarily_unavailable"
    retry_after = draw(st.sampled_from([None, None, 0.0, 1.0, 120.0, _FUTURE, "soon"]))
    what = f"{status} {body_kind} {body!r:.60} retry_after={retry_after!r}"

    def inject(server: FakeOAuthServer) -> None:
        server.fail_next(
            status=status,
            body=body,
            content_type=content_type,
            retry_after=retry_after,
            headers=headers,
        )

    return Plan("status", what, inject, transient)


# -- timing and loss -------------------------------------------------------------------------


def _valid() -> Plan:
    return Plan("valid", "the endpoint's own answer", lambda server: server.delay_next(0.0))


def _disconnect_before() -> Plan:
    return Plan("disconnect-before", "dropped before deciding", lambda s: s.disconnect_next(), True)


SLOW_PLANS = st.sampled_from(
    [
        Plan("slow", "decides after 0.02 s", lambda s: s.delay_next(0.02)),
        _rewrite("slow", "body after 0.02 s", lambda a: a.replace(body_delay=0.02)),
    ]
)
_DROPPED = Plan("lost", "dropped after deciding", lambda s: s.disconnect_next(after_decision=True))
_CUT = _rewrite("lost", "body cut in half", lambda a: a.replace(complete=False))
_STALLED = _rewrite(
    "lost",
    f"body stalls {_BEYOND} s (client timeout {CLIENT_TIMEOUT} s), then cut",
    lambda a: a.replace(body_delay=_BEYOND, complete=False),
)
_LATE = Plan(
    "lost",
    f"decides after {_BEYOND} s (client timeout {CLIENT_TIMEOUT} s)",
    lambda s: s.delay_next(_BEYOND),
)
#: The two answers slower than the client's timeout cost real time: a third of the losses.
LOST_PLANS = st.sampled_from([_DROPPED, _CUT, _STALLED, _DROPPED, _CUT, _LATE])


def plans(flavor: Flavor) -> st.SearchStrategy[Plan]:
    """Every kind of answer a token endpoint of ``flavor`` may give."""
    kinds = [
        st.just(_valid()),
        odd_plans(flavor),
        unusable_plans(flavor),
        broken_json_plans(),
        status_plans(),
        st.just(_disconnect_before()),
        SLOW_PLANS,
        LOST_PLANS,
    ]
    if flavor == "erpeasy":
        kinds.append(cookie_plans())
    return st.one_of(kinds)
