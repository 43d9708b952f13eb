"""Encryption at rest: AESGCMCipher, keys from the environment, and sealed records in every
persisting store (real files, a real redis-server): nothing secret at rest, records bound to
their key, typed errors that name the key id, plain records sealed on their next write."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from backends import Backend, cipher
from support import FAST_RETRY, collect, keliweb, token

from asynctoken import ConfigurationError, SealedRecordError, StoreError, TokenManager, TokenStore
from asynctoken.crypto import AESGCMCipher, format_key, generate_key, parse_keys
from asynctoken.testing import FakeOAuthServer

AD = b"record binding"


# -- the cipher ---------------------------------------------------------------------------------


def test_round_trip_with_the_primary_and_any_listed_key() -> None:
    old = cipher("old")
    key_id, sealed = old.encrypt(b"refresh-token-xyz", AD)
    assert key_id == "old"
    assert b"refresh-token-xyz" not in sealed
    rotated = cipher("new", "old")
    assert rotated.primary == "new"
    assert rotated.key_ids == ("new", "old")
    assert rotated.decrypt("old", sealed, AD) == b"refresh-token-xyz"
    new_id, resealed = rotated.encrypt(b"refresh-token-xyz", AD)
    assert new_id == "new"
    with pytest.raises(KeyError):
        old.decrypt("new", resealed, AD)


def test_each_seal_uses_a_fresh_nonce() -> None:
    c = cipher()
    assert c.encrypt(b"same", AD) != c.encrypt(b"same", AD)


@pytest.mark.parametrize("change", ["associated data", "ciphertext", "nonce", "truncated"])
def test_anything_altered_fails_to_open(change: str) -> None:
    c = cipher()
    _, sealed = c.encrypt(b"payload", AD)
    ad = AD
    if change == "associated data":
        ad = b"another credential"
    elif change == "ciphertext":
        sealed = sealed[:-1] + bytes([sealed[-1] ^ 1])
    elif change == "nonce":
        sealed = bytes([sealed[0] ^ 1]) + sealed[1:]
    else:
        sealed = sealed[:20]
    with pytest.raises(ValueError):  # noqa: PT011 - the documented contract is ValueError
        c.decrypt("k1", sealed, ad)


def test_repr_names_key_ids_only() -> None:
    key = generate_key()
    c = AESGCMCipher({"2026-12": key, "2026-06": generate_key()}, primary="2026-12")
    assert repr(c) == "AESGCMCipher(primary='2026-12', key_ids=['2026-12', '2026-06'])"
    assert base64.b64encode(key).decode() not in repr(c)


@pytest.mark.parametrize(
    ("keys", "primary"),
    [
        ({}, "a"),
        ({"a": b"short"}, "a"),
        ({"a": b"x" * 32}, "b"),
        ({"bad id": b"x" * 32}, "bad id"),
        ({"": b"x" * 32}, ""),
        ({"a": "x" * 32}, "a"),
    ],
)
def test_invalid_keys_are_refused(keys: dict[str, bytes], primary: str) -> None:
    with pytest.raises(ConfigurationError):
        AESGCMCipher(keys, primary=primary)


def test_generated_keys_are_random_and_round_trip_through_the_environment_format() -> None:
    first, second = generate_key(), generate_key()
    assert len(first) == 32
    assert first != second
    text = f"{format_key('2026-12', first)},\n  {format_key('2026-06', second)}"
    keys, primary = parse_keys(text)
    assert primary == "2026-12"
    assert keys == {"2026-12": first, "2026-06": second}


def test_from_env_reads_urlsafe_and_unpadded_base64() -> None:
    key = bytes(range(250, 256)) + bytes(26)  # base64 with '+' and '/' characters
    standard = base64.b64encode(key).decode()
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    for encoded in (standard, urlsafe):
        c = AESGCMCipher.from_env(environ={"ASYNCTOKEN_KEYS": f"main:{encoded} old:{standard}"})
        assert c.key_ids == ("main", "old")
        assert c.decrypt("old", c.encrypt(b"x", AD)[1], AD) == b"x"
    named = AESGCMCipher.from_env("MY_KEYS", environ={"MY_KEYS": f"a:{standard}"})
    assert named.primary == "a"


SECRET_KEY = base64.b64encode(b"S" * 32).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "not set"),
        ("   ", "not set"),
        (SECRET_KEY, "KEY_ID:BASE64"),
        (f"a:{SECRET_KEY} a:{SECRET_KEY}", "twice"),
        (f"bad/id:{SECRET_KEY}", "key id"),
        ("a:not*base64", "base64"),
        (f"a:{SECRET_KEY[:-8]}", "bytes"),
    ],
)
def test_bad_environment_is_a_configuration_error_without_key_material(
    value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        AESGCMCipher.from_env(environ={"ASYNCTOKEN_KEYS": value})
    assert SECRET_KEY not in str(caught.value)
    assert SECRET_KEY[:-8] not in str(caught.value)


def test_asynctoken_imports_without_cryptography(tmp_path: Path) -> None:
    code = (
        "import sys, asyncio; sys.modules['cryptography'] = None\n"
        "import asynctoken\n"
        "from asynctoken import FileStore, Token\n"
        "store = FileStore(sys.argv[1])\n"
        "asyncio.run(store.put('k', Token(access_token='a', expires_at=1.0)))\n"
        "print(asyncio.run(store.get('k')).access_token)\n"
        "try:\n"
        "    import asynctoken.crypto\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "a",
        "asynctoken.crypto needs the cryptography package: pip install 'asynctoken[crypto]'",
    ]


# -- sealed records in every persisting store ---------------------------------------------------


async def test_records_are_sealed_with_the_key_id_in_clear(backend: Backend) -> None:
    store = backend.open(cipher("2026-12"))
    try:
        await store.put("tenant/1", token(1))
        raw = await backend.read_raw("tenant/1")
        assert raw is not None
        record = json.loads(raw)
        assert set(record) == {"v", "sealed", "kid", "data"}
        assert (record["sealed"], record["kid"]) == ("A256GCM", "2026-12")
        assert b"access-1" not in raw
        assert b"refresh-1" not in raw
        assert await store.get("tenant/1") == token(1)
    finally:
        await store.aclose()


async def test_plain_records_are_read_and_sealed_on_their_next_write(backend: Backend) -> None:
    plain = backend.open()
    await plain.put("k", token(1))
    await plain.put("untouched", token(5))
    await plain.aclose()
    store = backend.open(cipher())
    try:
        assert await store.get("k") == token(1)
        assert await store.replace("k", token(2), expected_refresh_token="refresh-1")
        raw = await backend.read_raw("k")
        assert raw is not None
        assert json.loads(raw)["kid"] == "k1"
        assert await store.get("k") == token(2)
        assert await store.get("untouched") == token(5)  # still plain, still read
    finally:
        await store.aclose()


async def test_rotated_keys_open_old_records_and_seal_new_ones_with_the_primary(
    backend: Backend,
) -> None:
    old = backend.open(cipher("2026-06"))
    await old.put("k", token(1))
    await old.aclose()
    store = backend.open(cipher("2026-12", "2026-06"))
    try:
        assert await store.get("k") == token(1)
        await store.put("k", token(2))
        raw = await backend.read_raw("k")
        assert raw is not None
        assert json.loads(raw)["kid"] == "2026-12"
    finally:
        await store.aclose()


async def unopenable(backend: Backend, how: str) -> tuple[TokenStore, str]:
    """Write two records and make the one of "victim" unopenable ``how``; return a store to read
    it with and the key id the error must name."""
    writer = backend.open(cipher("2026-06"))
    await writer.put("victim", token(1))
    await writer.put("other", token(2))
    await writer.aclose()
    if how == "unknown key id":
        return backend.open(cipher("2026-12")), "2026-06"
    if how == "wrong key":
        return backend.open(AESGCMCipher({"2026-06": generate_key()}, primary="2026-06")), "2026-06"
    if how == "no cipher":
        return backend.open(), "2026-06"
    raw = await backend.read_raw("victim" if how == "tampered" else "other")
    assert raw is not None
    record = json.loads(raw)
    if how == "tampered":
        data = bytearray(base64.b64decode(record["data"]))
        data[20] ^= 1
        record["data"] = base64.b64encode(bytes(data)).decode()
    # else "copied": another tenant's sealed record put under the victim's key.
    await backend.write_raw("victim", json.dumps(record).encode())
    return backend.open(cipher("2026-06")), "2026-06"


@pytest.mark.parametrize("how", ["unknown key id", "wrong key", "no cipher", "tampered", "copied"])
async def test_an_unopenable_record_is_a_typed_error_never_an_empty_store(
    backend: Backend, how: str
) -> None:
    reader, key_id = await unopenable(backend, how)
    try:
        with pytest.raises(SealedRecordError) as caught:
            await reader.get("victim")
        error = caught.value
        assert isinstance(error, StoreError)
        assert (error.key, error.key_id) == ("victim", key_id)
        assert "victim" in str(error)
        assert key_id in str(error)
        for secret in ("access-1", "refresh-1", "access-2", "refresh-2"):
            assert secret not in str(error)
            assert secret not in repr(error)
        # Never mistaken for a missing credential: a replace or a seed cannot write over it...
        with pytest.raises(SealedRecordError):
            await reader.replace("victim", token(3), expected_refresh_token="refresh-1")
        assert not await reader.put_if_absent("victim", token(3))
        # ...and it is still listed.
        assert "victim" in await collect(reader.keys())
        if how in ("tampered", "copied"):
            assert await reader.get("other") == token(2)  # the right key opens the others
    finally:
        await reader.aclose()
    assert await backend.read_raw("victim") is not None


# -- nothing secret at rest after real refreshes -------------------------------------------------

PASSWORD = "pw-very-secret-0123456789"


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain"])
async def test_no_token_or_password_at_rest_after_several_refreshes(
    server: FakeOAuthServer, backend: Backend, sealed: bool
) -> None:
    """The plain run is the control: it shows that the scan does find secrets when they are
    there."""
    provider = keliweb(server, username="user@example.com", password=PASSWORD)
    seed = server.issue_refresh_token()
    store = backend.open(cipher() if sealed else None)
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("tenant", provider, refresh_token=seed)
        await tm.add("second", provider, refresh_token=server.issue_refresh_token())
        for _ in range(4):
            await tm.refresh("tenant")
        await tm.get_token("second")
        latest = await tm.get_token("tenant")
    secrets = {seed, PASSWORD, server.client_secret}
    for record in server.requests:
        secrets |= {record.refresh_token, record.issued_access_token, record.issued_refresh_token}
    secrets.discard(None)
    assert len(secrets) >= 12
    raw = await backend.raw_bytes()
    found = {s for s in secrets if s and s.encode() in raw}
    if sealed:
        assert not found
        reopened = backend.open(cipher())
        try:
            assert await reopened.get("tenant") == latest
        finally:
            await reopened.aclose()
    else:
        assert latest.access_token in found
        assert latest.refresh_token in found
