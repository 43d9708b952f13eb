"""OAuth2Provider's client authentication and DPoP against a certified OpenID provider.

The server is npm ``oidc-provider`` (tests/oidc_server.py): it verifies client assertions, DPoP
proofs, nonces and client certificates itself; its counters say what it accepted. Its
``/resource`` endpoint checks each access token's binding (DPoP key or certificate).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from oidc_server import CLIENT_SECRET, OIDCServer

from asynctoken import InvalidClientError, OAuth2Provider, Token
from asynctoken._dpop import DPoPKey

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s


def tls_context(oidc: OIDCServer, cert: Any, key: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(oidc.keys.ca))
    context.load_cert_chain(str(cert), str(key))
    return context


async def call_resource(
    session: aiohttp.ClientSession,
    url: str,
    token: Token,
    *,
    ssl_context: ssl.SSLContext | bool = True,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": token.authorization}
    if token.dpop_key is not None:
        headers["DPoP"] = DPoPKey.from_jwk(token.dpop_key).proof(
            "GET", url, access_token=token.access_token
        )
    async with session.get(url, headers=headers, ssl=ssl_context) as resp:
        return resp.status, await resp.json()


def signing_key(oidc: OIDCServer, alg: str) -> tuple[Any, str]:
    keys = oidc.keys
    return {
        "RS256": (keys.rsa, "rsa-1"),
        "PS256": (keys.rsa, "rsa-1"),
        "ES256": (keys.ec, "ec-1"),
        "EdDSA": (keys.ed25519, "ed-1"),
    }[alg]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_private_key_jwt_refreshes_with_rotation(
    oidc_server: OIDCServer, session: aiohttp.ClientSession, alg: str
) -> None:
    key, kid = signing_key(oidc_server, alg)
    provider = OAuth2Provider(
        oidc_server.token_url,
        "key-jwt",
        auth_method="private_key_jwt",
        private_key=key,
        key_id=kid,
        signing_alg=alg,  # type: ignore[arg-type]
    )
    before = oidc_server.stats("key-jwt").get("token_ok", 0)
    refresh = oidc_server.seed("key-jwt")
    for _ in range(3):  # each refresh rotates: the old refresh token would revoke the grant
        token = await provider.fetch_token(session, refresh_token=refresh, issued_at=time.time())
        assert token.refresh_token
        assert token.refresh_token != refresh
        refresh = token.refresh_token
    assert token.token_type == "Bearer"
    assert oidc_server.stats("key-jwt")["token_ok"] == before + 3
    assert await call_resource(session, oidc_server.issuer + "/resource", token) == (
        200,
        {"client_id": "key-jwt", "bound": {"jkt": False, "x5t": False}},
    )


async def test_private_key_jwt_pem_with_issuer_audience(
    oidc_server: OIDCServer, session: aiohttp.ClientSession
) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = oidc_server.keys.ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    provider = OAuth2Provider(
        oidc_server.token_url,
        "key-jwt",
        auth_method="private_key_jwt",
        private_key=pem,
        key_id="ec-1",
        signing_alg="ES256",
        assertion_audience=oidc_server.issuer,
        grant_type="client_credentials",
    )
    token = await provider.fetch_token(session, refresh_token=None, issued_at=time.time())
    assert token.access_token
    assert pem not in repr(provider)


async def test_a_key_the_server_does_not_know_is_invalid_client(
    oidc_server: OIDCServer, session: aiohttp.ClientSession
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    provider = OAuth2Provider(
        oidc_server.token_url,
        "key-jwt",
        auth_method="private_key_jwt",
        private_key=ec.generate_private_key(ec.SECP256R1()),
        key_id="ec-1",
        signing_alg="ES256",
        grant_type="client_credentials",
    )
    with pytest.raises(InvalidClientError) as info:
        await provider.fetch_token(session, refresh_token=None, issued_at=time.time())
    assert info.value.error == "invalid_client"


async def test_client_secret_jwt(oidc_server: OIDCServer, session: aiohttp.ClientSession) -> None:
    provider = OAuth2Provider(
        oidc_server.token_url, "secret-jwt", CLIENT_SECRET, auth_method="client_secret_jwt"
    )
    refresh = oidc_server.seed("secret-jwt")
    first = await provider.fetch_token(session, refresh_token=refresh, issued_at=time.time())
    second = await provider.fetch_token(
        session, refresh_token=first.refresh_token, issued_at=time.time()
    )
    assert second.refresh_token not in (None, refresh, first.refresh_token)
    assert CLIENT_SECRET not in repr(provider)


async def test_client_secret_jwt_with_a_wrong_secret_is_invalid_client(
    oidc_server: OIDCServer, session: aiohttp.ClientSession
) -> None:
    provider = OAuth2Provider(
        oidc_server.token_url,
        "secret-jwt",
        "not-the-secret-but-long-enough-for-hs256",
        auth_method="client_secret_jwt",
        grant_type="client_credentials",
    )
    with pytest.raises(InvalidClientError):
        await provider.fetch_token(session, refresh_token=None, issued_at=time.time())


@pytest.mark.parametrize(
    ("client_id", "which"),
    [("tls", "ca-issued"), ("self-signed-tls", "self-signed")],
)
async def test_mutual_tls_binds_the_token_to_the_certificate(
    oidc_server: OIDCServer, session: aiohttp.ClientSession, client_id: str, which: str
) -> None:
    keys = oidc_server.keys
    cert, key = (
        (keys.client_cert, keys.client_key)
        if which == "ca-issued"
        else (keys.self_signed_cert, keys.self_signed_key)
    )
    context = tls_context(oidc_server, cert, key)
    method = "tls_client_auth" if which == "ca-issued" else "self_signed_tls_client_auth"
    provider = OAuth2Provider(
        oidc_server.tls_token_url,
        client_id,
        auth_method=method,  # type: ignore[arg-type]
        client_cert=context,
    )
    assert provider.ssl_context is context
    refresh = oidc_server.seed(client_id)
    token = await provider.fetch_token(session, refresh_token=refresh, issued_at=time.time())
    token = await provider.fetch_token(
        session, refresh_token=token.refresh_token, issued_at=time.time()
    )
    resource = oidc_server.tls_url + "/resource"
    # Presenting the certificate: accepted, and the server saw the binding.
    assert await call_resource(session, resource, token, ssl_context=context) == (
        200,
        {"client_id": client_id, "bound": {"jkt": False, "x5t": True}},
    )
    # A connection without it: the bound token is refused.
    no_cert = ssl.create_default_context(cafile=str(keys.ca))
    status, body = await call_resource(session, resource, token, ssl_context=no_cert)
    assert (status, body["error"]) == (401, "invalid_token")


async def test_mutual_tls_from_certificate_files(
    oidc_server: OIDCServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The (cert, key) form verifies the server with the default trust store: point it at the CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(oidc_server.keys.ca))
    keys = oidc_server.keys
    provider = OAuth2Provider(
        oidc_server.tls_token_url,
        "tls",
        auth_method="tls_client_auth",
        client_cert=(str(keys.client_cert), str(keys.client_key)),
        grant_type="client_credentials",
    )
    token = await provider.fetch_token(session, refresh_token=None, issued_at=time.time())
    status, body = await call_resource(
        session, oidc_server.tls_url + "/resource", token, ssl_context=provider.ssl_context or True
    )
    assert (status, body["bound"]) == (200, {"jkt": False, "x5t": True})


@pytest.mark.parametrize(
    ("client_id", "auth"),
    [
        (
            "secret-basic-dpop",
            {"client_secret": CLIENT_SECRET, "auth_method": "client_secret_basic"},
        ),
        ("secret-jwt-dpop", {"client_secret": CLIENT_SECRET, "auth_method": "client_secret_jwt"}),
        (
            "key-jwt-dpop",
            {"auth_method": "private_key_jwt", "key_id": "ec-1", "signing_alg": "ES256"},
        ),
        (
            "key-jwt-dpop-nonce",
            {"auth_method": "private_key_jwt", "key_id": "ec-1", "signing_alg": "ES256"},
        ),
    ],
)
@pytest.mark.parametrize("dpop_alg", ["ES256", "EdDSA"])
async def test_dpop_binds_tokens_to_the_key(
    oidc_server: OIDCServer,
    session: aiohttp.ClientSession,
    client_id: str,
    auth: dict[str, Any],
    dpop_alg: str,
) -> None:
    if auth["auth_method"] == "private_key_jwt":
        auth = {**auth, "private_key": oidc_server.keys.ec}
    provider = OAuth2Provider(
        oidc_server.token_url,
        client_id,
        dpop=True,
        dpop_alg=dpop_alg,
        **auth,  # type: ignore[arg-type]
    )
    before = oidc_server.stats(client_id)
    refresh = oidc_server.seed(client_id)
    first = await provider.fetch_token(session, refresh_token=refresh, issued_at=time.time())
    assert first.token_type == "DPoP"
    assert first.dpop_key is not None
    assert "dpop_key=…" in repr(first)
    assert first.dpop_key not in repr(first)
    # The next refresh reuses the stored key (as the manager passes the stored token).
    second = await provider.fetch_token(
        session, refresh_token=first.refresh_token, issued_at=time.time(), current=first
    )
    assert second.dpop_key == first.dpop_key
    after = oidc_server.stats(client_id)
    nonce_errors = after.get("token_use_dpop_nonce", 0) - before.get("token_use_dpop_nonce", 0)
    assert after["token_ok"] - before.get("token_ok", 0) == 2
    if client_id.endswith("-nonce"):
        # Only the very first request of this provider lacks the nonce: it is remembered after.
        assert nonce_errors == 1
    else:
        assert nonce_errors == 0
    resource = oidc_server.issuer + "/resource"
    assert await call_resource(session, resource, second) == (
        200,
        {"client_id": client_id, "bound": {"jkt": True, "x5t": False}},
    )
    # The same access token with another key's proof is refused: it is bound to the first key.
    stolen = Token(
        access_token=second.access_token,
        expires_at=second.expires_at,
        token_type="DPoP",
        dpop_key=DPoPKey.generate().jwk,
    )
    status, body = await call_resource(session, resource, stolen)
    assert (status, body["error"]) == (401, "invalid_token")
