"""The fake server's rewritten answers (``rewrite_next``, ``disconnect_next(after_decision=True)``)
and delivery records, driven with plain aiohttp requests (never the asynctoken client).

The endpoint decides first (a refresh rotates, a reuse revokes), then sends what the test made
of its answer; every record says whether its answer reached the connection in full.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from asynctoken.testing import FakeOAuthServer, TokenAnswer


class Reply:
    """A fully read HTTP answer."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def refresh(
    http: aiohttp.ClientSession,
    server: FakeOAuthServer,
    refresh_token: str,
    *,
    timeout: float = 5.0,
) -> Reply:
    """One refresh request in the server's flavor, read in full."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    headers: dict[str, str] = {}
    if server.flavor == "erpeasy":
        secret = base64.b64encode(f"{server.client_id}:{server.client_secret}".encode())
        headers["Authorization"] = f"Basic {secret.decode()}"
    else:
        form.update(client_id=server.client_id, client_secret=server.client_secret)
    async with http.post(
        server.token_url,
        data=form,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        return Reply(resp.status, resp.headers, await resp.read())


async def test_a_rewrite_changes_what_is_sent_not_what_was_decided(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    seen: list[TokenAnswer] = []

    def odd_fields(answer: TokenAnswer) -> TokenAnswer:
        seen.append(answer)
        data = answer.json()
        data["ratio"] = float("nan")  # json.dumps writes NaN, as many servers do
        return answer.with_json(data)

    server.rewrite_next(odd_fields)
    reply = await refresh(http, server, old)

    (decided,) = seen
    record = server.requests[0]
    assert decided.is_rotation
    assert decided.presented_refresh_token == old
    assert decided.refresh_token == record.issued_refresh_token
    assert decided.access_token == record.issued_access_token
    assert decided.status == 200
    assert decided.header_values("content-type") == ["application/json; charset=utf-8"]
    assert reply.status == 200
    assert b'"ratio": NaN' in reply.raw
    assert json.loads(reply.raw)["refresh_token"] == record.issued_refresh_token
    assert server.valid_refresh_tokens == [record.issued_refresh_token]  # rotated all the same
    assert record.outcome == "ok"
    assert record.delivered is True
    assert not record.lost_in_flight


async def test_a_rewrite_sees_error_answers_too(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    seen: list[TokenAnswer] = []
    server.rewrite_next(lambda answer: seen.append(answer) or answer)
    reply = await refresh(http, server, "def50200unknown")
    (decided,) = seen
    assert not decided.is_rotation
    assert decided.refresh_token is None
    assert decided.status == reply.status == 400
    assert decided.json()["error"] == "invalid_grant"
    assert server.requests[0].delivered is True


async def test_broken_json_around_a_rotated_refresh_token(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()

    def cut_after_refresh_token(answer: TokenAnswer) -> TokenAnswer:
        assert answer.refresh_token is not None
        text = json.dumps({"refresh_token": answer.refresh_token, "access_token": "x"})
        return answer.with_body(text[:-8])  # ...,"access_token": "

    server.rewrite_next(cut_after_refresh_token)
    reply = await refresh(http, server, old)
    new = server.requests[0].issued_refresh_token
    assert new is not None
    assert reply.raw.decode().startswith(f'{{"refresh_token": "{new}", "access')
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.raw)
    assert server.valid_refresh_tokens == [new]
    assert not server.requests[0].lost_in_flight


async def test_several_set_cookie_headers_in_order_and_folded(
    erpeasy_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = erpeasy_server
    old = server.issue_refresh_token()
    deletion = "refresh_token=; Path=/; Max-Age=0"
    server.rewrite_next(lambda a: a.with_headers([("Set-Cookie", deletion)]))
    reply = await refresh(http, server, old)
    live, deleted = reply.headers.getall("Set-Cookie")
    new = server.requests[0].issued_refresh_token
    assert live.startswith(f"refresh_token={new}; ")
    assert deleted == deletion

    def folded(answer: TokenAnswer) -> TokenAnswer:
        line = ", ".join([*answer.header_values("Set-Cookie"), deletion])
        return answer.with_headers([("Set-Cookie", line)], drop=["Set-Cookie"])

    server.rewrite_next(folded)
    assert new is not None
    reply = await refresh(http, server, new)
    newer = server.requests[1].issued_refresh_token
    (line,) = reply.headers.getall("Set-Cookie")
    assert line.startswith(f"refresh_token={newer}; ")
    assert line.endswith(f", {deletion}")
    assert server.valid_refresh_tokens == [newer]


async def test_disconnect_after_the_decision_loses_the_rotation(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    server.disconnect_next(after_decision=True)
    with pytest.raises(aiohttp.ClientError):
        await refresh(http, server, old)
    record = server.requests[0]
    assert record.outcome == "ok"
    assert record.status is None
    assert record.delivered is False
    assert record.lost_in_flight
    assert server.valid_refresh_tokens == [record.issued_refresh_token]
    # What a client that lost the answer does next: reuse, and the family is revoked.
    assert (await refresh(http, server, old)).status == 400
    assert server.reuse_detected == 1
    assert server.valid_refresh_tokens == []


async def test_disconnect_before_the_decision_keeps_the_refresh_token(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    server.disconnect_next()
    with pytest.raises(aiohttp.ClientError):
        await refresh(http, server, old)
    record = server.requests[0]
    assert record.delivered is False
    assert not record.lost_in_flight
    assert server.valid_refresh_tokens == [old]


async def test_a_cut_body_is_lost_in_flight(
    erpeasy_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = erpeasy_server
    old = server.issue_refresh_token()
    server.rewrite_next(lambda a: a.replace(complete=False))
    with pytest.raises(aiohttp.ClientPayloadError):
        await refresh(http, server, old)
    record = server.requests[0]
    assert record.status == 200  # the status line and headers went out
    assert record.delivered is False
    assert record.lost_in_flight


async def test_a_slow_body_within_the_client_timeout_is_delivered(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    server.rewrite_next(lambda a: a.replace(body_delay=0.05))
    reply = await refresh(http, server, old, timeout=10.0)
    record = server.requests[0]
    assert json.loads(reply.raw)["refresh_token"] == record.issued_refresh_token
    assert record.delivered is True
    assert not record.lost_in_flight


async def test_a_slow_body_beyond_the_client_timeout_is_lost_in_flight(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    # The body would be complete after 0.6 s; the client gives up after 0.1 s and closes the
    # connection, which the server sees when it comes back to write the rest.
    server.rewrite_next(lambda a: a.replace(body_delay=0.6))
    with pytest.raises(asyncio.TimeoutError):
        await refresh(http, server, old, timeout=0.1)
    await server.wait_for_token_deliveries(1)
    record = server.requests[0]
    assert record.delivered is False
    assert record.lost_in_flight
    assert server.valid_refresh_tokens == [record.issued_refresh_token]


async def test_closing_the_server_cuts_a_slow_body(http: aiohttp.ClientSession) -> None:
    server = await FakeOAuthServer("oauth2").start()
    try:
        old = server.issue_refresh_token()
        server.rewrite_next(lambda a: a.replace(body_delay=30.0))
        request = asyncio.ensure_future(refresh(http, server, old))
        await server.wait_for_token_responses(1)
    finally:
        await server.close()
    with pytest.raises(aiohttp.ClientError):
        await request
    record = server.requests[0]
    assert record.delivered is False
    assert record.lost_in_flight


async def test_no_body_is_sent_with_a_204(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    server.fail_next(status=204, body="Service Unavailable", content_type="text/plain")
    server.rewrite_next(lambda a: a.replace(status=204))
    for _ in range(2):  # the same keep-alive connection stays usable after each
        reply = await refresh(http, server, old)
        assert (reply.status, reply.raw) == (204, b"")
    assert [r.delivered for r in server.requests] == [True, True]


async def test_wait_for_token_deliveries_counts_sent_and_dropped_answers(
    oauth2_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = oauth2_server
    rt = server.issue_refresh_token()
    server.disconnect_next()
    with pytest.raises(aiohttp.ClientError):
        await refresh(http, server, rt)
    assert await server.wait_for_token_deliveries(1) == 1
    await refresh(http, server, rt)
    assert await server.wait_for_token_deliveries(2) == 2
    assert [r.delivered for r in server.requests] == [False, True]
    with pytest.raises(TimeoutError):
        await server.wait_for_token_deliveries(3, timeout=0.05)


async def test_a_rewrite_must_return_an_answer(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    bad: Any = lambda answer: None  # noqa: E731
    server.rewrite_next(bad)
    reply = await refresh(http, server, old)
    assert reply.status == 500  # aiohttp's own answer to a crashed handler
    assert server.requests[0].delivered is False


def test_token_answer_checks_its_fields() -> None:
    ok = TokenAnswer(status=200, headers=(("Content-Type", "text/plain"),), body=b"x")
    for changes in (
        {"status": 199},
        {"status": 600},
        {"status": True},
        {"body": "text"},
        {"body_delay": -1.0},
        {"body_delay": float("inf")},
        {"headers": (("Content-Type",),)},
        {"headers": (("X", 1),)},
    ):
        with pytest.raises(ValueError, match=r"status|body|headers"):
            ok.replace(**changes)
    server = FakeOAuthServer()
    bad: Any = "not callable"
    with pytest.raises(ValueError, match="rewrite"):
        server.rewrite_next(bad)
    with pytest.raises(ValueError, match="n must be"):
        server.rewrite_next(lambda a: a, 0)


def test_token_answer_helpers_and_masked_repr() -> None:
    answer = TokenAnswer(
        status=200,
        headers=(("Set-Cookie", "a=1"), ("content-type", "application/json"), ("SET-COOKIE", "b")),
        body=b"{}",
        refresh_token="def50200-secret-refresh-token",
        access_token="eyJ-secret-access-token",
        presented_refresh_token="def50200-old",
    )
    assert answer.header_values("set-cookie") == ["a=1", "b"]
    html = answer.with_body("<html>é</html>", "text/html")
    assert html.body == "<html>é</html>".encode()
    assert html.header_values("Content-Type") == ["text/html"]
    assert html.header_values("Set-Cookie") == ["a=1", "b"]
    data = answer.with_json({"n": float("inf"), "big": 10**30})
    assert data.body == b'{"n": Infinity, "big": 1000000000000000000000000000000}'
    assert answer.is_rotation
    assert not answer.replace(refresh_token="def50200-old").is_rotation
    text = repr(answer)
    assert "secret" not in text
    assert "body_bytes=2" in text
