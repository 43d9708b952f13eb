"""Never run: type-checked by ``nox -s typing`` to keep the public API usable as users write it."""

from __future__ import annotations

import aiohttp

from asynctoken import (
    ERPeasyProvider,
    FileStore,
    InvalidGrantError,
    KeliwebProvider,
    Margins,
    MemoryStore,
    OAuth2Provider,
    Provider,
    RedisStore,
    RetryPolicy,
    Token,
    TokenError,
    TokenManager,
    TokenStore,
)
from asynctoken.sync import SyncTokenManager


async def keliweb_app() -> str:
    keliweb = KeliwebProvider(client_id="id", client_secret="secret")
    async with TokenManager(store=MemoryStore()) as tm:
        await tm.add("keliweb", keliweb, refresh_token="def502")
        token: Token = await tm.get_token("keliweb")
        expires_at: float = token.expires_at
        refresh: str | None = token.refresh_token
        assert expires_at
        assert refresh is not None
        await tm.invalidate("keliweb", token)
        return token.authorization


async def erpeasy_with_middleware() -> int:
    erpeasy = ERPeasyProvider(
        client_id="id", client_secret="secret", email="a@b.c", password="pw", company="1"
    )
    store: TokenStore = FileStore("tokens.json")
    async with TokenManager(store=store, margins=Margins(refresh=120), retry=RetryPolicy()) as tm:
        await tm.add("erp", erpeasy)
        async with (
            aiohttp.ClientSession(middlewares=[tm.middleware("erp")]) as session,
            session.get("https://api.example.com/") as resp,
        ):
            return resp.status


async def many_tenants(url: str) -> None:
    def provider_for(key: str) -> Provider | None:
        return OAuth2Provider(
            token_url="https://auth.example.com/token",
            client_id=key,
            client_secret="secret",
            auth_method="client_secret_basic",
            grant_type="client_credentials",
        )

    async with TokenManager(store=RedisStore(url), provider_factory=provider_for) as tm:
        try:
            await tm.get_token("tenant-1")
        except InvalidGrantError as exc:
            print(exc.status, exc.error)
        except TokenError as exc:
            print(exc.key)


async def mangled_answers() -> bool:
    from asynctoken.testing import FakeOAuthServer, TokenAnswer

    def odd_field(answer: TokenAnswer) -> TokenAnswer:
        if not answer.is_rotation:
            return answer
        return answer.with_json({**answer.json(), "ratio": float("nan")}).replace(body_delay=0.1)

    async with FakeOAuthServer("erpeasy") as server:
        server.rewrite_next(odd_field)
        server.disconnect_next(after_decision=True)
        await server.wait_for_token_deliveries(2, timeout=None)
        return any(record.lost_in_flight for record in server.requests)


async def httpx_with_token_auth() -> int:
    import httpx

    from asynctoken.httpx import TokenAuth

    async with TokenManager() as tm:
        await tm.add("k", KeliwebProvider(client_id="id", client_secret="secret"))
        auth = TokenAuth(tm, "k", origins=["https://api.example.com"])
        async with httpx.AsyncClient(auth=auth) as client:
            response = await client.get("https://api.example.com/")
            return response.status_code


def encrypted_stores(url: str) -> list[TokenStore]:
    from asynctoken.crypto import AESGCMCipher, format_key, generate_key

    cipher = AESGCMCipher({"2026-12": generate_key(), "2026-06": generate_key()}, primary="2026-12")
    print(format_key("2027-06", generate_key()), AESGCMCipher.from_env().key_ids)
    return [FileStore("tokens.json", cipher=cipher), RedisStore(url, cipher=cipher)]


async def sealed_record_error(store: TokenStore) -> None:
    from asynctoken import SealedRecordError

    try:
        await store.get("tenant-1")
    except SealedRecordError as exc:
        print(exc.key, exc.key_id, exc.location)


async def watched() -> None:
    from asynctoken.events import Event, ReauthorizationRequired, RefreshFailed

    alerts: list[str] = []

    def on_event(event: Event) -> None:
        if isinstance(event, ReauthorizationRequired):
            alerts.append(f"{event.key}: {event.error.message}")
        elif isinstance(event, RefreshFailed) and not event.background:
            alerts.append(type(event.error).__name__)

    async def on_event_async(event: Event) -> None:
        alerts.append(event.key)

    async with TokenManager(on_event=on_event, telemetry_keys=False) as tm:
        await tm.get_token("k")
    async with TokenManager(on_event=on_event_async, telemetry=False, lock_wait_threshold=2.0):
        pass


def sync_worker(path: str) -> str:
    from asynctoken import SyncTokenManager as Exported

    assert Exported is SyncTokenManager
    keliweb = KeliwebProvider(client_id="id", client_secret="secret")
    with SyncTokenManager(store=FileStore(path), margins=Margins(refresh=120)) as tm:
        stored: bool = tm.add("keliweb", keliweb, refresh_token="def502")
        token: Token = tm.get_token("keliweb")
        dropped: bool = tm.invalidate("keliweb", token)
        assert stored or dropped
        fresh: Token = tm.refresh("keliweb")
        retry: Token | None = tm.token_rejected("keliweb", fresh)
        assert retry is None or retry.access_token
        removed: bool = tm.remove("keliweb")
        assert removed
        return fresh.authorization


def sync_requests(tm: SyncTokenManager) -> int:
    import requests

    from asynctoken.requests import TokenAuth

    with requests.Session() as http:
        http.auth = TokenAuth(tm, "keliweb", origins=["https://fatture.keliweb.it"])
        return http.get("https://fatture.keliweb.it/api/invoices").status_code
