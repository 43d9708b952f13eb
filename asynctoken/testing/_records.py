"""What the fake server saw: one record per token request and per protected-API request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .._secrets import mask

__all__ = ["ApiCall", "TokenRequest"]


@dataclass(slots=True, eq=False, repr=False)
class TokenRequest:
    """One request to the token endpoint, recorded when it arrives and completed when answered.

    The record holds the raw values the client sent (refresh token, client secret, password) so
    that a test can assert on them; its ``repr`` masks them.

    Attributes:
        index: arrival order, from 0.
        time: the server clock's ``time()`` at arrival.
        loop_time: the event loop's ``time()`` at arrival (real monotonic seconds).
        method: the HTTP method.
        content_type: the request's ``Content-Type`` without parameters.
        grant_type: the ``grant_type`` field, or ``None`` when absent.
        refresh_token: the refresh token presented (body field or, for ERPeasy, cookie).
        refresh_token_source: ``"cookie"``, ``"body"`` or ``None``.
        client_id: the client id presented (Basic header or body).
        client_auth: ``"basic"``, ``"post"``, ``"both"`` or ``None``: how the client
            authenticated.
        username: ``username`` (or ERPeasy ``email``) for the password grant.
        params: every form field as sent (secrets included).
        headers: the request headers (case-insensitive).
        cookies: the request cookies.
        outcome: ``"pending"`` until answered, then one of ``"ok"``, ``"reused"`` (a rotated
            refresh token came back), ``"revoked"``, ``"expired"``, ``"invalid"`` (unknown
            refresh token, wrong password), ``"invalid_client"``, ``"invalid_request"``,
            ``"unsupported_grant_type"``, ``"method_not_allowed"``, ``"injected:<status>"``,
            ``"injected:<malformed kind>"``, ``"injected:disconnect"`` or ``"cancelled"``
            (the server closed first).
        status: the HTTP status answered, ``None`` while pending or when disconnected.
        issued_access_token: the access token in a successful answer.
        issued_refresh_token: the refresh token in a successful answer (JSON or cookie), or
            ``None`` when the answer carried none.
        delivered: ``None`` until the answer is written; then ``True`` when all of it was
            handed to an open connection, ``False`` when the connection was dropped first (an
            injected disconnect, a cut or stalled body, the client gone, the server closing).
    """

    index: int
    time: float
    loop_time: float
    method: str
    content_type: str
    grant_type: str | None
    refresh_token: str | None
    refresh_token_source: str | None
    client_id: str | None
    client_auth: str | None
    username: str | None
    params: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    cookies: Mapping[str, str]
    outcome: str = "pending"
    status: int | None = None
    issued_access_token: str | None = None
    issued_refresh_token: str | None = None
    delivered: bool | None = None

    @property
    def done(self) -> bool:
        """Whether the server has answered (or given up on) this request."""
        return self.outcome != "pending"

    @property
    def lost_in_flight(self) -> bool:
        """Whether this request rotated the refresh token but its answer never fully reached
        the client: the one window in which no client can keep the new refresh token."""
        return (
            self.delivered is False
            and self.issued_refresh_token is not None
            and self.issued_refresh_token != self.refresh_token
        )

    def __repr__(self) -> str:
        return (
            f"TokenRequest(index={self.index}, grant_type={self.grant_type!r}, "
            f"refresh_token={mask(self.refresh_token)!r}, "
            f"refresh_token_source={self.refresh_token_source!r}, "
            f"client_auth={self.client_auth!r}, outcome={self.outcome!r}, status={self.status!r}, "
            f"delivered={self.delivered!r})"
        )


@dataclass(slots=True, eq=False, repr=False)
class ApiCall:
    """One request to the protected endpoint.

    Attributes:
        index: arrival order, from 0.
        time: the server clock's ``time()`` at arrival.
        method: the HTTP method.
        path: the request path.
        access_token: the bearer token sent, or ``None`` when there was none.
        outcome: ``"ok"``, ``"missing"`` (no bearer token), ``"unknown"``, ``"expired"`` or
            ``"revoked"``.
        status: 200 or 401.
        headers: the request headers (case-insensitive).
        body_len: the request body size in bytes.
    """

    index: int
    time: float
    method: str
    path: str
    access_token: str | None
    outcome: str
    status: int
    headers: CIMultiDictProxy[str]
    body_len: int

    def __repr__(self) -> str:
        return (
            f"ApiCall(index={self.index}, method={self.method!r}, path={self.path!r}, "
            f"access_token={mask(self.access_token)!r}, outcome={self.outcome!r}, "
            f"status={self.status})"
        )
