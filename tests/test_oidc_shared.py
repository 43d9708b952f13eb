"""Every client authentication, with DPoP and certificate binding, through the manager and the
middleware, against the certified OpenID provider: in one process and in several processes
sharing one FileStore through several expiries."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _oidc_worker import MARGINS
from oidc_server import ACCESS_TOKEN_TTL, CLIENT_SECRET, OIDCServer

from asynctoken import FileStore, OAuth2Provider, TokenManager

pytestmark = pytest.mark.asyncio

WORKER = Path(__file__).parent / "_oidc_worker.py"


def credentials(oidc: OIDCServer) -> list[dict[str, Any]]:
    """One credential per client authentication, each with the binding it is registered for."""
    keys = oidc.keys
    tls_cert = [str(keys.client_cert), str(keys.client_key), str(keys.ca)]
    self_signed = [str(keys.self_signed_cert), str(keys.self_signed_key), str(keys.ca)]
    return [
        {
            "key": "key-jwt-dpop-nonce",
            "provider": {
                "token_url": oidc.token_url,
                "client_id": "key-jwt-dpop-nonce",
                "auth_method": "private_key_jwt",
                "private_key": str(keys.directory / "ec-key.pem"),
                "key_id": "ec-1",
                "signing_alg": "ES256",
                "dpop": True,
            },
            "resource": oidc.issuer + "/resource-nonce",
        },
        {
            "key": "key-jwt",
            "provider": {
                "token_url": oidc.token_url,
                "client_id": "key-jwt",
                "auth_method": "private_key_jwt",
                "private_key": str(keys.directory / "rsa-key.pem"),
                "key_id": "rsa-1",
                "signing_alg": "PS256",
            },
            "resource": oidc.issuer + "/resource",
        },
        {
            "key": "secret-jwt-dpop",
            "provider": {
                "token_url": oidc.token_url,
                "client_id": "secret-jwt-dpop",
                "client_secret": CLIENT_SECRET,
                "auth_method": "client_secret_jwt",
                "dpop": True,
                "dpop_alg": "EdDSA",
            },
            "resource": oidc.issuer + "/resource",
        },
        {
            "key": "tls-dpop",
            "provider": {
                "token_url": oidc.tls_token_url,
                "client_id": "tls-dpop",
                "auth_method": "tls_client_auth",
                "client_cert": tls_cert,
                "dpop": True,
            },
            "resource": oidc.tls_url + "/resource",
        },
        {
            "key": "self-signed-tls",
            "provider": {
                "token_url": oidc.tls_token_url,
                "client_id": "self-signed-tls",
                "auth_method": "self_signed_tls_client_auth",
                "client_cert": self_signed,
            },
            "resource": oidc.tls_url + "/resource",
        },
    ]


def provider_from(spec: dict[str, Any]) -> OAuth2Provider:
    kwargs = dict(spec)
    if "private_key" in kwargs:
        kwargs["private_key"] = Path(kwargs["private_key"]).read_bytes()
    if "client_cert" in kwargs:
        cert, key, ca = kwargs["client_cert"]
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        kwargs["client_cert"] = context
    return OAuth2Provider(**kwargs)


async def seed_store(oidc: OIDCServer, path: Path, creds: list[dict[str, Any]]) -> None:
    async with TokenManager(store=FileStore(path)) as tm:
        for credential in creds:
            refresh_token = oidc.seed(credential["provider"]["client_id"])
            await tm.add(
                credential["key"],
                provider_from(credential["provider"]),
                refresh_token=refresh_token,
            )


async def test_one_process_sends_bound_tokens_with_fresh_proofs(
    oidc_server: OIDCServer, tmp_path: Path
) -> None:
    creds = credentials(oidc_server)
    store = tmp_path / "tokens.json"
    await seed_store(oidc_server, store, creds)
    before = {c["key"]: oidc_server.stats(c["provider"]["client_id"]) for c in creds}
    async with TokenManager(store=FileStore(store)) as tm:
        for credential in creds:
            provider = provider_from(credential["provider"])
            await tm.add(credential["key"], provider)
            connector = aiohttp.TCPConnector(ssl=provider.ssl_context or True)
            async with aiohttp.ClientSession(
                connector=connector, middlewares=[tm.middleware(credential["key"])]
            ) as session:
                # Queries and fragments stay out of the proof's htu; the server checks it.
                for suffix in ("", "?page=2", "?q=1#frag"):
                    async with session.get(credential["resource"] + suffix) as resp:
                        body = await resp.json()
                        assert resp.status == 200, (credential["key"], body)
            stats = oidc_server.stats(credential["provider"]["client_id"])
            old = before[credential["key"]]
            assert stats["token_ok"] - old.get("token_ok", 0) == 1
            assert stats["resource_ok"] - old.get("resource_ok", 0) == 3
            token = await tm.get_token(credential["key"])
            bound = credential["provider"].get("dpop", False)
            assert body["bound"]["jkt"] is bound
            assert body["bound"]["x5t"] is (credential["key"] == "self-signed-tls")
            assert (token.token_type == "DPoP") is bound
            assert (token.dpop_key is not None) is bound
    nonce_client = oidc_server.stats("key-jwt-dpop-nonce")
    old = before["key-jwt-dpop-nonce"]
    # The resource's nonce was asked for once, answered once, then remembered.
    assert nonce_client["resource_use_dpop_nonce"] - old.get("resource_use_dpop_nonce", 0) == 1
    # The key is stored with the credential, so another process can prove possession.
    record = json.loads(store.read_text())["credentials"]["key-jwt-dpop-nonce"]
    assert json.loads(record["dpop_key"])["kty"] == "EC"


@pytest.mark.slow
async def test_processes_share_each_credential_through_expiries(
    oidc_server: OIDCServer, tmp_path: Path
) -> None:
    creds = credentials(oidc_server)
    store = tmp_path / "tokens.json"
    await seed_store(oidc_server, store, creds)
    client_ids = [c["provider"]["client_id"] for c in creds]
    before = {client: oidc_server.stats(client) for client in client_ids}
    stop = tmp_path / "stop"
    config = tmp_path / "worker.json"
    config.write_text(
        json.dumps(
            {"store": str(store), "stop_file": str(stop), "callers": 2, "credentials": creds}
        )
    )
    launched = time.time()
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            str(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for proc in processes:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    started = time.time()
    await asyncio.sleep(ACCESS_TOKEN_TTL * 2.5)  # the run's length: about four token lifetimes
    stop.touch()
    results = []
    for proc in processes:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    elapsed = time.time() - started
    for credential in creds:
        key, client = credential["key"], credential["provider"]["client_id"]
        counters = [r[key] for r in results]
        assert sum(c["failed"] for c in counters) == 0, (key, counters)
        assert all(c["calls"] > 0 for c in counters), (key, counters)
        stats, old = oidc_server.stats(client), before[client]
        new = {name: stats.get(name, 0) - old.get(name, 0) for name in stats}
        # Every call reached the resource and passed its binding checks.
        assert new["resource_ok"] >= sum(c["calls"] for c in counters), (key, new)
        # Token requests: one per expiry, across all processes; none refused (a reused,
        # rotated refresh token would have been refused and revoked the grant).
        refreshes = [t for t in oidc_server.token_times(client) if t >= launched]
        assert 2 <= new["token_ok"] <= elapsed / 1.0 + 2, (key, new)
        # Spaced by the token's fresh period (with room for a loaded machine), not per call.
        fresh = ACCESS_TOKEN_TTL - MARGINS.offsets(ACCESS_TOKEN_TTL)[0]
        spacing = [b - a for a, b in pairwise(refreshes)]
        assert min(spacing) > fresh * 0.5, (key, new, spacing)
        errors = {n: v for n, v in new.items() if n.startswith("token_") and n != "token_ok" and v}
        if client.endswith("-nonce"):
            # At most one nonce round trip per process: each remembers the nonce afterwards.
            assert set(errors) <= {"token_use_dpop_nonce"}, (key, errors)
            assert errors.get("token_use_dpop_nonce", 0) <= len(processes) + 1
        else:
            assert errors == {}, (key, errors)


async def test_httpx_sends_dpop_proofs_and_answers_a_resource_nonce(
    oidc_server: OIDCServer, tmp_path: Path
) -> None:
    import httpx

    from asynctoken.httpx import TokenAuth

    spec = credentials(oidc_server)[0]  # private_key_jwt + DPoP, the resource wants a nonce
    assert spec["key"] == "key-jwt-dpop-nonce"
    client_id = spec["provider"]["client_id"]
    before = oidc_server.stats(client_id)
    async with TokenManager() as tm:
        await tm.add(
            "k", provider_from(spec["provider"]), refresh_token=oidc_server.seed(client_id)
        )
        async with httpx.AsyncClient(auth=TokenAuth(tm, "k")) as client:
            for suffix in ("", "?page=2"):
                resp = await client.post(spec["resource"] + suffix, content=b"payload")
                assert resp.status_code == 200, resp.text
                assert resp.json()["bound"] == {"jkt": True, "x5t": False}
    stats = oidc_server.stats(client_id)
    new = {name: stats.get(name, 0) - before.get(name, 0) for name in stats}
    assert new["resource_ok"] == 2
    assert new["resource_use_dpop_nonce"] == 1
    assert new["token_ok"] == 1


async def test_the_dpop_key_stays_with_the_credential_across_refreshes_and_restarts(
    oidc_server: OIDCServer, tmp_path: Path
) -> None:
    spec = credentials(oidc_server)[2]  # client_secret_jwt + DPoP (EdDSA)
    assert spec["key"] == "secret-jwt-dpop"
    store = tmp_path / "tokens.json"
    await seed_store(oidc_server, store, [spec])
    keys = []
    for _ in range(2):  # two managers in a row: a restart in between
        async with TokenManager(store=FileStore(store)) as tm:
            await tm.add(spec["key"], provider_from(spec["provider"]))
            token = await tm.get_token(spec["key"])
            keys.append(token.dpop_key)
            await tm.invalidate(spec["key"], token)  # the next call refreshes
            again = await tm.get_token(spec["key"])
            assert again.access_token != token.access_token
            keys.append(again.dpop_key)
    assert keys[0] is not None
    assert keys == [keys[0]] * 4  # generated once, then always the stored one
    assert json.loads(store.read_text())["credentials"][spec["key"]]["dpop_key"] == keys[0]


async def test_a_sealed_store_holds_the_dpop_key_encrypted(
    oidc_server: OIDCServer, tmp_path: Path
) -> None:
    from asynctoken.crypto import AESGCMCipher, generate_key

    spec = credentials(oidc_server)[0]
    cipher = AESGCMCipher({"k1": generate_key()}, primary="k1")
    path = tmp_path / "sealed.json"
    async with TokenManager(store=FileStore(path, cipher=cipher)) as tm:
        await tm.add(
            spec["key"],
            provider_from(spec["provider"]),
            refresh_token=oidc_server.seed(spec["provider"]["client_id"]),
        )
        token = await tm.get_token(spec["key"])
    assert token.dpop_key is not None
    raw = path.read_bytes()
    private = json.loads(token.dpop_key)["d"]
    for secret in (private, token.access_token, token.refresh_token or "?"):
        assert secret.encode() not in raw
    # Another process with the cipher reads the key back and proves possession with it.
    async with TokenManager(store=FileStore(path, cipher=cipher)) as tm:
        await tm.add(spec["key"], provider_from(spec["provider"]))
        async with (
            aiohttp.ClientSession(middlewares=[tm.middleware(spec["key"])]) as session,
            session.get(spec["resource"]) as resp,
        ):
            assert resp.status == 200, await resp.text()
        assert (await tm.get_token(spec["key"])).dpop_key == token.dpop_key
