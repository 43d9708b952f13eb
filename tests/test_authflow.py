"""The transport-neutral rules every client adapter follows (asynctoken._authflow).

The adapters' own tests (test_middleware.py, test_httpx.py) check the same rules end to end
against real loopback servers; these pin down the decisions themselves, input by input.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from yarl import URL

from asynctoken import ConfigurationError, Token
from asynctoken._authflow import AuthRules, Verdict, origin_text, parse_origin


def token(access: str, token_type: str = "Bearer") -> Token:
    return Token(access_token=access, expires_at=2e9, token_type=token_type)


@pytest.mark.parametrize(
    ("one", "two"),
    [
        ("https://api.example.com", "https://API.example.com:443/path?q=1"),
        ("http://127.0.0.1", "http://127.0.0.1:80/"),
        ("https://bücher.example", "https://xn--bcher-kva.example/"),
        ("http://[::1]:8080", "http://[::1]:8080/x"),
    ],
)
def test_equal_origins_whatever_the_spelling(one: str, two: str) -> None:
    assert parse_origin(one) == parse_origin(two) == parse_origin(URL(two))
    assert parse_origin(httpx.URL(two)) == parse_origin(one)


@pytest.mark.parametrize("url", ["https://api.example.com:8443/x", "https://bücher.example/"])
def test_covers_agrees_for_yarl_and_httpx_urls(url: str) -> None:
    rules = AuthRules("k", origins=[url])
    y, h = URL(url), httpx.URL(url)
    assert rules.covers(y.scheme, y.raw_host, y.port)
    assert rules.covers(h.scheme, h.raw_host.decode("ascii"), h.port)
    assert not rules.covers(h.scheme, h.raw_host.decode("ascii"), 1)
    assert not rules.covers("http", h.raw_host.decode("ascii"), h.port)


def test_first_origin_is_pinned_once() -> None:
    rules = AuthRules("k")
    assert rules.origins is None
    assert rules.covers("https", "a.example", None)
    assert rules.covers("https", "a.example", 443)
    assert not rules.covers("https", "b.example", None)
    assert rules.origins == frozenset({("https", "a.example", 443)})
    assert "https://a.example" in rules.describe()


def test_racing_first_requests_pin_one_origin() -> None:
    rules = AuthRules("k")
    start = threading.Barrier(8)
    results: dict[int, bool] = {}

    def first(n: int) -> None:
        start.wait()
        results[n] = rules.covers("https", f"host{n}.example", None)

    threads = [threading.Thread(target=first, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results.values()) == 1  # exactly one thread's origin got the token
    assert rules.origins is not None
    assert len(rules.origins) == 1


def test_plain_http_first_origin_is_refused_and_not_pinned() -> None:
    rules = AuthRules("k")
    with pytest.raises(ConfigurationError, match=r"plain http to http://10\.0\.0\.1:8080"):
        rules.covers("http", "10.0.0.1", 8080)
    assert rules.origins is None
    assert rules.covers("http", "localhost", 8080)
    assert AuthRules("k", allow_insecure_http=True).covers("http", "10.0.0.1", None)


@pytest.mark.parametrize(
    "origins", ["https://a.example", URL("https://a.example"), httpx.URL("https://a.example")]
)
def test_a_single_url_for_origins_is_refused(origins: object) -> None:
    with pytest.raises(ConfigurationError, match="not a single URL"):
        AuthRules("k", origins=origins)  # type: ignore[arg-type]


def test_origin_text_brackets_ipv6() -> None:
    assert origin_text(parse_origin("http://[::1]:8080/x")) == "http://[::1]:8080"


def test_headers_are_built_once_per_token() -> None:
    rules = AuthRules("k")
    one, two = token("one"), token("two")
    first = rules.headers(one, "GET", "https://a.example/")
    assert first == {"Authorization": "Bearer one"}
    assert rules.headers(one, "POST", URL("https://a.example/x")) is first
    assert rules.headers(two, "GET", "https://a.example/") == {"Authorization": "Bearer two"}
    assert rules.headers(token("x", "mac"), "GET", "/") == {"Authorization": "mac x"}


@pytest.mark.parametrize(
    ("challenges", "default", "strict"),
    [
        (['Bearer error="invalid_token"'], Verdict.NEW_TOKEN, Verdict.NEW_TOKEN),
        (["Bearer error=invalid_token"], Verdict.NEW_TOKEN, Verdict.NEW_TOKEN),
        (['bearer realm="x", error="INVALID_TOKEN"'], Verdict.NEW_TOKEN, Verdict.NEW_TOKEN),
        (['Bearer error="insufficient_scope", scope="a"'], Verdict.KEEP, Verdict.KEEP),
        (['Bearer error_description="invalid_token"'], Verdict.NEW_TOKEN, Verdict.KEEP),
        (['Basic realm="x", Bearer error="invalid_token"'], Verdict.NEW_TOKEN, Verdict.NEW_TOKEN),
        (['Basic realm="x"', 'Bearer error="invalid_request"'], Verdict.KEEP, Verdict.KEEP),
        (['Basic error="invalid_token"'], Verdict.NEW_TOKEN, Verdict.KEEP),
        (["Bearer"], Verdict.NEW_TOKEN, Verdict.KEEP),
        ([], Verdict.NEW_TOKEN, Verdict.KEEP),
    ],
)
def test_verdict(challenges: list[str], default: Verdict, strict: Verdict) -> None:
    assert AuthRules("k").verdict(challenges) is default
    assert AuthRules("k", require_invalid_token=True).verdict(challenges) is strict


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("", {}),
        ("k", {"origins": []}),
        ("k", {"origins": ["/relative"]}),
        ("k", {"origins": ["http://api.example.com"]}),
        ("k", {"allow_insecure_http": 1}),
    ],
)
def test_invalid_configuration(key: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        AuthRules(key, **options)  # type: ignore[arg-type]
