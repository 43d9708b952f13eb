"""``asynctoken rekey`` as an operator runs it (a subprocess), over every persisting store: key
rotation re-seals every record, resumes after a kill -9, reports what it cannot open, and never
overwrites a refresh that a running application writes meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from dataclasses import dataclass

import pytest
from backends import Backend, cipher
from support import FAST_RETRY, keliweb, token

from asynctoken import Token, TokenManager
from asynctoken.crypto import AESGCMCipher, format_key
from asynctoken.testing import FakeOAuthServer

OLD = cipher("2026-06")
ROTATED = cipher("2026-12", "2026-06")


def keys_env(*names: str) -> str:
    """``ASYNCTOKEN_KEYS`` for the keys of backends.cipher(*names)."""
    return ",".join(format_key(name, name.encode().ljust(32, b"#")[:32]) for name in names)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def counts(self) -> tuple[int, int, int]:
        match = re.search(r"(\d+) re-sealed .*?, (\d+) already .*?, (\d+) could not", self.out)
        assert match, self.out + self.err
        rewritten, unchanged, failed = (int(n) for n in match.groups())
        return rewritten, unchanged, failed


async def start_rekey(backend: Backend, *args: str) -> asyncio.subprocess.Process:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTOKEN_")}
    environ["ASYNCTOKEN_KEYS"] = keys_env("2026-12", "2026-06")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctoken",
        "rekey",
        *backend.cli_args(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )


async def rekey(backend: Backend, *args: str) -> Result:
    process = await start_rekey(backend, *args)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def key_ids(backend: Backend, keys: list[str]) -> list[str | None]:
    """The key id of each record (``None`` for a plain one)."""
    ids = []
    for key in keys:
        raw = await backend.read_raw(key)
        assert raw is not None, key
        ids.append(json.loads(raw).get("kid"))
    return ids


async def fill(backend: Backend, sealed: int, plain: int) -> list[str]:
    old, bare = backend.open(OLD), backend.open()
    keys = []
    try:
        for n in range(sealed):
            await old.put(f"sealed-{n}", token(n))
            keys.append(f"sealed-{n}")
        for n in range(plain):
            await bare.put(f"plain-{n}", token(1000 + n))
            keys.append(f"plain-{n}")
    finally:
        await old.aclose()
        await bare.aclose()
    return keys


async def test_rekey_seals_every_record_with_the_primary_and_a_rerun_does_nothing(
    backend: Backend,
) -> None:
    keys = await fill(backend, sealed=30, plain=10)
    first = await rekey(backend, "--batch", "7")
    assert first.code == 0, first.err
    assert first.counts() == (40, 0, 0)
    assert "'2026-12'" in first.out
    assert await key_ids(backend, keys) == ["2026-12"] * 40
    store = backend.open(cipher("2026-12"))  # the old key is no longer needed
    try:
        assert await store.get("sealed-3") == token(3)
        assert await store.get("plain-4") == token(1004)
    finally:
        await store.aclose()
    again = await rekey(backend)
    assert again.code == 0, again.err
    assert again.counts() == (0, 40, 0)


async def test_rekey_killed_midway_resumes_where_it_stopped(backend: Backend) -> None:
    keys = await fill(backend, sealed=300, plain=0)
    process = await start_rekey(backend, "--batch", "10", "-v")
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert b"records done" in line, line
    process.send_signal(signal.SIGKILL)
    await process.wait()
    done = (await key_ids(backend, keys)).count("2026-12")  # every record still readable
    assert 10 <= done < 300, done
    resumed = await rekey(backend)
    assert resumed.code == 0, resumed.err
    assert resumed.counts() == (300 - done, done, 0)
    assert await key_ids(backend, keys) == ["2026-12"] * 300


async def test_rekey_lists_records_it_cannot_open_and_keeps_them(backend: Backend) -> None:
    keys = await fill(backend, sealed=5, plain=0)
    lost = backend.open(AESGCMCipher({"lost-key": b"L" * 32}, primary="lost-key"))
    try:
        await lost.put("orphan", Token(access_token="AT-ORPHAN-SECRET", expires_at=1.0))
    finally:
        await lost.aclose()
    before = await backend.read_raw("orphan")
    result = await rekey(backend)
    assert result.code == 3
    assert result.counts() == (5, 0, 1)
    assert "orphan" in result.out
    assert "'lost-key'" in result.out
    assert "AT-ORPHAN-SECRET" not in result.out + result.err
    assert await backend.read_raw("orphan") == before
    assert await key_ids(backend, keys) == ["2026-12"] * 5


async def test_rekey_without_keys_is_a_usage_error(backend: Backend) -> None:
    await fill(backend, sealed=1, plain=0)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTOKEN_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctoken",
        "rekey",
        *backend.cli_args(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert b"ASYNCTOKEN_KEYS" in err


HOT = 12


@pytest.mark.slow
async def test_rekey_while_the_application_refreshes_loses_no_rotation(
    server: FakeOAuthServer, backend: Backend
) -> None:
    """An application process refreshes a dozen credentials back to back while rekey walks the
    store. That process has not been given the new primary yet (a rolling deploy), so it keeps
    writing records that rekey must re-seal: many chances for rekey to write over a rotation.
    The server rotates on every refresh and revokes on reuse, so one such overwrite would be
    caught (the next refresh would present a used refresh token)."""
    await fill(backend, sealed=100, plain=0)
    old = backend.open(OLD)
    hot = [f"hot-{n}" for n in range(HOT)]
    try:
        for key in hot:
            seed = Token(access_token="", expires_at=0, refresh_token=server.issue_refresh_token())
            await old.put(key, seed)
    finally:
        await old.aclose()
    stop = asyncio.Event()
    refreshes = 0

    not_yet_rolled_out = cipher("2026-06", "2026-12")
    async with TokenManager(store=backend.open(not_yet_rolled_out), retry=FAST_RETRY) as tm:
        for key in hot:
            await tm.add(key, keliweb(server))

        async def refresh_loop(key: str) -> None:
            nonlocal refreshes
            while not stop.is_set():
                await tm.refresh(key)
                refreshes += 1

        loops = [asyncio.create_task(refresh_loop(key)) for key in hot]
        try:
            results = [await rekey(backend, "--batch", "5") for _ in range(3)]
        finally:
            stop.set()
            await asyncio.gather(*loops)
        for result in results:
            assert result.code == 0, result.out + result.err
        # Every run re-sealed records the application had written with the old key meanwhile.
        assert results[0].counts()[0] >= 100
        assert all(result.counts()[0] >= 1 for result in results[1:])
        during = server.token_requests
        for key in hot:  # every stored refresh token is the one the server considers live
            await tm.refresh(key)
    assert refreshes >= HOT * 2, refreshes
    assert during > HOT
    assert server.reuse_detected == 0
    store = backend.open(ROTATED)
    try:
        for key in hot:
            stored = await store.get(key)
            assert stored is not None
            assert server.is_valid_refresh_token(stored.refresh_token or "")
    finally:
        await store.aclose()
