"""The protected resource of the fake server: accepts a valid bearer token, counts every call.

RFC 6750 §3: a request without credentials gets ``401`` with a bare ``WWW-Authenticate: Bearer``;
a request with an expired, revoked or unknown token gets ``401`` with
``WWW-Authenticate: Bearer error="invalid_token"``.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .._clock import Clock
from ._records import ApiCall
from ._registry import Registry
from ._sync import ArrivalCounter

__all__ = ["ProtectedResource"]

_DESCRIPTIONS = {
    "expired": "The access token expired",
    "revoked": "The access token was revoked",
    "unknown": "The access token is invalid",
}


class ProtectedResource:
    """The protected-endpoint part of :class:`~asynctoken.testing.FakeOAuthServer`."""

    _api_calls: list[ApiCall]
    _api_arrived: ArrivalCounter
    _registry: Registry
    _clock: Clock

    @property
    def api_requests(self) -> int:
        """Requests to the protected endpoint."""
        return len(self._api_calls)

    @property
    def api_unauthorized(self) -> int:
        """Protected-endpoint requests answered 401."""
        return sum(1 for call in self._api_calls if call.status == 401)

    @property
    def api_calls(self) -> list[ApiCall]:
        """A copy of the list of protected-endpoint records, in arrival order."""
        return list(self._api_calls)

    def access_token_uses(self, access_token: str) -> int:
        """How many protected-endpoint requests carried ``access_token`` (valid or not)."""
        return sum(1 for call in self._api_calls if call.access_token == access_token)

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        access = None
        if scheme.lower() != "bearer" or not token:
            outcome: str = "missing"
        else:
            outcome, access = self._registry.check_access(token)
        call = ApiCall(
            index=len(self._api_calls),
            time=self._clock.time(),
            method=request.method,
            path=request.path,
            access_token=token or None,
            outcome=outcome,
            status=200 if outcome == "ok" else 401,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body_len=len(body),
        )
        self._api_calls.append(call)
        self._api_arrived.increment()
        if outcome == "missing":
            return web.json_response(
                {"ok": False}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        if access is None or outcome != "ok":
            payload = {
                "ok": False,
                "error": "invalid_token",
                "error_description": _DESCRIPTIONS[outcome],
            }
            headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return web.json_response(payload, status=401, headers=headers)
        access.uses += 1
        return web.json_response(
            {
                "ok": True,
                "client": access.client_id,
                "method": request.method,
                "body_len": len(body),
            }
        )
