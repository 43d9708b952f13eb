"""The :class:`FakeOAuthServer`: a real loopback HTTP server speaking Keliweb, ERPeasy or OAuth2."""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Awaitable, Collection, Mapping
from typing import Any, Protocol

from aiohttp import web

from .._clock import Clock, SystemClock
from .._secrets import mask
from .._token import Token
from ..providers._http import is_loopback_host
from ._answers import TokenAnswer, send_answer
from ._endpoint import ClientCredentials, Flavor, Settings, TokenEndpoint, read_token_request
from ._faults import FailureInjection, Fault, check_delay
from ._records import ApiCall, TokenRequest
from ._registry import Registry
from ._resource import ProtectedResource
from ._sync import ArrivalCounter, Gate, ServerClosedError, Synchronisation

__all__ = ["FakeOAuthServer", "FakeOAuthServerFactory", "Flavor"]

_FLAVORS = ("keliweb", "erpeasy", "oauth2")


def _check_loopback(host: str) -> None:
    if not is_loopback_host(host):  # the same rule the providers use for plain http
        raise ValueError(f"FakeOAuthServer binds loopback addresses only, not {host!r}")


def _positive(name: str, value: float | None, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return float(value)


class FakeOAuthServer(FailureInjection, Synchronisation, ProtectedResource):
    """A token endpoint and a protected API on loopback, for tests.

    It mirrors the real servers closely (see the flavors below), remembers every token it issued,
    rotates refresh tokens, detects reuse, and lets a test inject failures and park requests.
    Everything a test waits on is event-based: no sleeping needed.

    Flavors:
        ``"keliweb"``: Laravel Passport. Form body, client credentials in the body, JSON answer
        with a ``def50200…`` refresh token, reuse → 400 ``invalid_grant`` (401
        ``invalid_request`` with ``passport_legacy_errors``).
        ``"erpeasy"``: Spring. Basic client auth required, refresh token read from a
        ``refresh_token`` cookie or body field, new refresh token ONLY in a ``Set-Cookie`` header
        (foreign ``Domain``, ``Secure``), extra user/company fields; expired refresh token →
        401 ``invalid_token``.
        ``"oauth2"``: RFC 6749. ``client_secret_basic`` or ``client_secret_post``; grants
        ``refresh_token``, ``password``, ``client_credentials``.

    Not thread-safe: use it from the event loop that started it.

    Args:
        flavor: which server to imitate.
        client_id: the one client accepted.
        client_secret: its secret.
        expires_in: access-token lifetime in seconds, on ``clock``.
        rotate: issue a new refresh token on each refresh and retire the used one. With
            ``False`` the refresh token stays valid (``"oauth2"`` then omits it from answers).
        revoke_family_on_reuse: when a retired refresh token comes back, revoke its whole
            family, the newest refresh token and access tokens included (RFC 9700 §4.14).
        refresh_token_ttl: refresh-token lifetime in seconds from issue, or ``None`` (forever).
        users: password-grant users, ``{username_or_email: password}``.
        company_id: ERPeasy ``company_id``.
        company_document: ERPeasy CNPJ, required as ``company`` in its password grant
            (compared on digits only).
        company_name: ERPeasy ``company_name``.
        erpeasy_refresh_token_in: where ERPeasy looks for the refresh token, ``"cookie"``
            and/or ``"body"`` (cookie wins when both are sent).
        cookie_domain: the ``Domain`` of ERPeasy's ``Set-Cookie``.
        passport_legacy_errors: Keliweb answers a dead refresh token like older Passport.
        whole_second_expiry: access tokens expire at ``floor(now) + expires_in`` while the
            answer says ``expires_in``, as every JWT issuer does (``exp`` is whole seconds): a
            token dies up to 1 s before the client expects.
        clock: where token lifetimes are measured (a :class:`~asynctoken.testing.FakeClock`
            makes expiry instant); the real clock by default.
        delay: seconds of latency added to every token response.
        host: a loopback address to bind (``"localhost"`` means ``127.0.0.1``).
        port: the port, 0 for any free one.
        seed: make token values reproducible.
        control_api: serve ``/_fake/…`` control routes (used by the standalone mode).

    Raises:
        ValueError: an argument is invalid, or ``host`` is not a loopback address.
    """

    def __init__(
        self,
        flavor: Flavor = "keliweb",
        *,
        client_id: str = "test-client",
        client_secret: str = "test-secret",
        expires_in: float = 3600.0,
        rotate: bool = True,
        revoke_family_on_reuse: bool = True,
        refresh_token_ttl: float | None = None,
        users: Mapping[str, str] | None = None,
        company_id: int = 1234,
        company_document: str = "11222333000181",
        company_name: str = "Empresa Teste Ltda",
        erpeasy_refresh_token_in: Collection[str] = ("cookie", "body"),
        cookie_domain: str = "api.erpeasy.compels.net",
        passport_legacy_errors: bool = False,
        whole_second_expiry: bool = False,
        clock: Clock | None = None,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        control_api: bool = False,
    ) -> None:
        if flavor not in _FLAVORS:
            raise ValueError(f"flavor must be one of {_FLAVORS}, not {flavor!r}")
        _check_loopback(host)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("port must be an int between 0 and 65535")
        sources = frozenset(erpeasy_refresh_token_in)
        if not sources or not sources <= {"cookie", "body"}:
            raise ValueError('erpeasy_refresh_token_in must be a subset of {"cookie", "body"}')
        users = dict(users if users is not None else {"user@example.com": "pw"})
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._settings = Settings(
            flavor=flavor,
            client_id=client_id,
            client_secret=client_secret,
            expires_in=1.0,
            rotate=rotate,
            revoke_family_on_reuse=revoke_family_on_reuse,
            refresh_token_ttl=None,
            passport_legacy_errors=passport_legacy_errors,
            users=users,
            company_id=company_id,
            company_document=company_document,
            company_name=company_name,
            refresh_token_sources=sources,
            cookie_domain=cookie_domain,
        )
        self.expires_in = expires_in
        self.refresh_token_ttl = refresh_token_ttl
        self.delay = delay
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        self._registry = Registry(flavor, rng, self._clock.time, whole_seconds=whole_second_expiry)
        self._endpoint = TokenEndpoint(self._settings, self._registry)
        # "localhost" may resolve to both 127.0.0.1 and ::1, which with port 0 would get two
        # different ports; bind one address so that the URL is unambiguous.
        self._host = "127.0.0.1" if host == "localhost" else host
        self._port = port
        self._control_api = control_api
        self._requests: list[TokenRequest] = []
        self._api_calls: list[ApiCall] = []
        self._faults: deque[Fault] = deque()
        self._gate = Gate()
        self._arrived = ArrivalCounter()
        self._answered = ArrivalCounter()
        self._delivered = ArrivalCounter()
        self._api_arrived = ArrivalCounter()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> FakeOAuthServer:
        """Bind and start serving; returns ``self``.

        Raises:
            RuntimeError: already started, or closed.
            OSError: the port could not be bound.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("a FakeOAuthServer can be started once")
        self._closing = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_route("*", "/oauth/token", self._handle_token)
        app.router.add_route("*", "/api/{tail:.*}", self._handle_api)
        if self._control_api:
            from ._control import add_control_routes

            add_control_routes(app, self)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, backlog=1024).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop serving. Parked and delayed requests are answered 503 at once; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        self._gate.close()
        for counter in (self._arrived, self._answered, self._delivered, self._api_arrived):
            counter.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeOAuthServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- addresses -------------------------------------------------------------------------

    @property
    def flavor(self) -> Flavor:
        """The flavor served."""
        return self._settings.flavor

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._runner is None:
            raise RuntimeError("the server is not started; await server.start() first")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def token_url(self) -> str:
        """The token endpoint, ``<base_url>/oauth/token``."""
        return f"{self.base_url}/oauth/token"

    @property
    def api_url(self) -> str:
        """The protected resource, ``<base_url>/api/me`` (any path under ``/api/`` works)."""
        return f"{self.base_url}/api/me"

    @property
    def client_id(self) -> str:
        """The accepted client id."""
        return self._settings.client_id

    @property
    def client_secret(self) -> str:
        """The accepted client secret."""
        return self._settings.client_secret

    @property
    def clock(self) -> Clock:
        """The clock token lifetimes are measured on."""
        return self._clock

    # -- settings a test may change between requests ----------------------------------------

    @property
    def expires_in(self) -> float:
        """Lifetime of access tokens issued from now on, in seconds."""
        return self._settings.expires_in

    @expires_in.setter
    def expires_in(self, value: float) -> None:
        self._settings.expires_in = _positive("expires_in", value) or 0.0

    @property
    def refresh_token_ttl(self) -> float | None:
        """Lifetime of refresh tokens issued from now on, or ``None``."""
        return self._settings.refresh_token_ttl

    @refresh_token_ttl.setter
    def refresh_token_ttl(self, value: float | None) -> None:
        self._settings.refresh_token_ttl = _positive("refresh_token_ttl", value, allow_none=True)

    @property
    def rotate(self) -> bool:
        """Whether refreshes rotate the refresh token."""
        return self._settings.rotate

    @rotate.setter
    def rotate(self, value: bool) -> None:
        self._settings.rotate = bool(value)

    @property
    def revoke_family_on_reuse(self) -> bool:
        """Whether reuse of a rotated refresh token revokes its family."""
        return self._settings.revoke_family_on_reuse

    @revoke_family_on_reuse.setter
    def revoke_family_on_reuse(self, value: bool) -> None:
        self._settings.revoke_family_on_reuse = bool(value)

    @property
    def delay(self) -> float:
        """Seconds of latency added to every token response (0 by default)."""
        return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._delay = check_delay(value)

    # -- what happened ---------------------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """Token-endpoint requests received, whatever their outcome."""
        return len(self._requests)

    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of the list of token-request records, in arrival order."""
        return list(self._requests)

    @property
    def reuse_detected(self) -> int:
        """How many times an already rotated refresh token was presented."""
        return self._registry.reuse_detected

    @property
    def valid_refresh_tokens(self) -> list[str]:
        """Refresh tokens that would be accepted now, oldest first."""
        return self._registry.valid_refresh_tokens()

    def is_valid_refresh_token(self, refresh_token: str) -> bool:
        """Whether ``refresh_token`` would be accepted now."""
        return self._registry.peek_refresh(refresh_token)

    def is_valid_access_token(self, access_token: str) -> bool:
        """Whether the protected endpoint would accept ``access_token`` now."""
        return self._registry.check_access(access_token)[0] == "ok"

    # -- seeding and revoking --------------------------------------------------------------

    def issue_refresh_token(self, *, user: str | None = None) -> str:
        """Mint a valid refresh token in a new family, to seed a client with.

        Args:
            user: the user it belongs to; the first of ``users`` by default.
        """
        family = self._registry.new_family(self._user(user), self.client_id)
        return self._registry.issue_refresh(family, self.refresh_token_ttl).value

    def issue_token(self, *, user: str | None = None) -> Token:
        """Mint a valid access + refresh token pair in a new family, as a :class:`Token`.

        ``expires_at`` and ``issued_at`` are on the server's clock. No request is counted.
        """
        user = self._user(user)
        family = self._registry.new_family(user, self.client_id)
        refresh = self._registry.issue_refresh(family, self.refresh_token_ttl)
        access = self._registry.issue_access(family, self.client_id, user, self.expires_in)
        erpeasy = self.flavor == "erpeasy"
        return Token(
            access_token=access.value,
            expires_at=access.expires_at,
            token_type="bearer" if erpeasy else "Bearer",
            refresh_token=refresh.value,
            scope="read write" if erpeasy else None,
            extra=self._endpoint.erpeasy_fields(user, access.jti) if erpeasy else {},
            issued_at=access.issued_at,
            provider=self.flavor,
        )

    def _user(self, user: str | None) -> str:
        if user is not None:
            return user
        return next(iter(self._settings.users), "user@example.com")

    def revoke(self, token: str, *, family: bool = False) -> bool:
        """Revoke a refresh or access token, or with ``family=True`` everything of its grant.

        Returns:
            Whether the token was known.
        """
        return self._registry.revoke(token, family=family)

    def expire_all_access_tokens(self) -> None:
        """Make every access token issued so far expired (the API answers 401)."""
        self._registry.expire_access_tokens()

    def expire_all_refresh_tokens(self) -> None:
        """Make every refresh token issued so far expired."""
        self._registry.expire_refresh_tokens()

    # -- handlers --------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        assert self._closing is not None
        if seconds > 0:
            await asyncio.wait({self._closing}, timeout=seconds)
        if self._closing.done():
            raise ServerClosedError

    async def _handle_token(self, request: web.Request) -> web.StreamResponse:
        record, creds = await read_token_request(request, self._settings)
        record.index = len(self._requests)
        record.time = self._clock.time()
        self._requests.append(record)
        fault = self._faults.popleft() if self._faults else None
        self._arrived.increment()
        try:
            try:
                await self._gate.passage()
                await self._pause(self._delay + (fault.delay if fault is not None else 0.0))
                answer = self._decide(record, creds, fault)
            except ServerClosedError:
                record.outcome, record.status = "cancelled", 503
                body = {"error": "temporarily_unavailable", "error_description": "Server closing."}
                closing = web.json_response(body, status=503, headers={"Connection": "close"})
                answer = TokenAnswer.of(closing, record)
            finally:
                if record.outcome == "pending":
                    record.outcome = "cancelled"
                self._answered.increment()
            return await send_answer(request, answer, record, self._pause)
        finally:
            if record.delivered is None:  # the handler itself was cancelled
                record.delivered = False
            self._delivered.increment()

    def _decide(
        self, record: TokenRequest, creds: ClientCredentials, fault: Fault | None
    ) -> TokenAnswer:
        """The answer to send: injected, or decided by the endpoint (and maybe rewritten)."""
        if fault is not None and fault.disconnect:
            record.outcome = fault.outcome
            return TokenAnswer(status=500, headers=(), body=b"", disconnect=True)
        if fault is not None and fault.status is not None:
            record.outcome = fault.outcome
            return TokenAnswer.of(fault.response(), record)
        answer = TokenAnswer.of(self._endpoint.answer(record, creds), record)
        if fault is not None and fault.rewrite is not None:
            answer = fault.rewrite(answer)
            if not isinstance(answer, TokenAnswer):
                raise TypeError(f"a rewrite must return a TokenAnswer, not {type(answer).__name__}")
        return answer

    def __repr__(self) -> str:
        where = self.base_url if self._runner is not None else "not started"
        return (
            f"FakeOAuthServer(flavor={self.flavor!r}, url={where!r}, client_id={self.client_id!r}, "
            f"client_secret={mask(self.client_secret)!r}, token_requests={self.token_requests}, "
            f"reuse_detected={self.reuse_detected}, held={self.held}, "
            f"pending_failures={self.pending_failures})"
        )


class FakeOAuthServerFactory(Protocol):
    """The type of the ``fake_oauth_server`` pytest fixture: builds and starts a server.

    Example::

        async def test_x(fake_oauth_server: FakeOAuthServerFactory) -> None:
            server = await fake_oauth_server("erpeasy", expires_in=60)
    """

    def __call__(self, flavor: Flavor = "keliweb", **kwargs: Any) -> Awaitable[FakeOAuthServer]:
        """Build ``FakeOAuthServer(flavor, **kwargs)``, start it, and close it at teardown."""
        ...
