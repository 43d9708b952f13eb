"""A fake OAuth2 token server and a manual clock, for testing code that uses asynctoken.

:class:`FakeOAuthServer` is a real HTTP server on loopback that speaks like Keliweb (Laravel
Passport), ERPeasy (Spring) or a plain RFC 6749 server: it rotates refresh tokens, detects reuse
and revokes the token family, expires access tokens on an injectable clock, serves a protected
endpoint, and lets a test inject failures, add latency, and park requests at a gate. With
:meth:`FakeOAuthServer.rewrite_next` the endpoint decides a request as usual (a refresh rotates)
and then sends a :class:`TokenAnswer` of the test's making: odd fields, broken JSON, extra
``Set-Cookie`` headers, a slow, cut or lost body; each record says whether its answer was
delivered (:attr:`TokenRequest.lost_in_flight`). Nothing requires sleeping: wait on events with
:meth:`FakeOAuthServer.wait_for_token_requests`.

Example::

    import aiohttp
    from asynctoken.testing import FakeClock, FakeOAuthServer


    async def test_refresh_rotates() -> None:
        clock = FakeClock()
        async with FakeOAuthServer("keliweb", clock=clock, expires_in=3600) as server:
            old = server.issue_refresh_token()
            form = {
                "grant_type": "refresh_token",
                "client_id": server.client_id,
                "client_secret": server.client_secret,
                "refresh_token": old,
            }
            async with aiohttp.ClientSession() as http:
                async with http.post(server.token_url, data=form) as resp:
                    body = await resp.json()
            assert server.valid_refresh_tokens == [body["refresh_token"]]
            clock.advance(3600)
            assert not server.is_valid_access_token(body["access_token"])

With pytest, the ``fake_oauth_server``, ``keliweb_server``, ``erpeasy_server`` and
``oauth2_server`` fixtures are available automatically (see
:mod:`asynctoken.testing.pytest_plugin`).
Standalone, in its own process: ``python -m asynctoken.testing --flavor keliweb --port 0`` prints
the token URL as its first line.
"""

from __future__ import annotations

from ._answers import AnswerRewrite, TokenAnswer
from ._clock import FakeClock
from ._faults import MalformedKind
from ._records import ApiCall, TokenRequest
from ._server import FakeOAuthServer, FakeOAuthServerFactory, Flavor

__all__ = [
    "AnswerRewrite",
    "ApiCall",
    "FakeClock",
    "FakeOAuthServer",
    "FakeOAuthServerFactory",
    "Flavor",
    "MalformedKind",
    "TokenAnswer",
    "TokenRequest",
]
