"""Stores at scale: FileStore and SQLiteStore with many credentials, and the cost of encryption.

Per store, in this process, against an in-process fake Keliweb server (no latency):

* ``add``: 100,000 credentials registered with ``tm.add(key, provider, refresh_token=...)``, a
  thousand at a time (``asyncio.gather``), as a migration script would;
* refresh: 1,000 of them (seeded with live refresh tokens, never refreshed) asked for at once
  (their callers start a hundred per loop iteration); wall time, token requests (must be 1,000),
  and the event loop's worst lag meanwhile, sampled by a task sleeping 1 ms in a loop. The same
  1,000 refreshes on a MemoryStore (no store I/O at all) give the baseline: the refreshes' own
  work (1,000 token requests answered, parsed and settled, the fake server's handlers on the same
  loop) stalls the loop that long whatever the store; the target is at most 20 ms over it;
* cold read: a new manager and a new store instance (nothing cached in the process), then
  ``get_token`` on those 1,000 credentials one after the other (a store read each, no token
  request); p50 and p99, and the first read apart (FileStore parses its file there).

Encryption: sealing plus opening one record (a Keliweb-sized token) with AESGCMCipher against
the plain JSON encoding, and the cold read (``store.get``) of SQLiteStore with and without a
cipher, interleaved.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asynctoken import (
    FileStore,
    KeliwebProvider,
    MemoryStore,
    SQLiteStore,
    Token,
    TokenManager,
    TokenStore,
)
from asynctoken.crypto import AESGCMCipher, generate_key
from asynctoken.stores._records import RecordCodec
from asynctoken.testing import FakeOAuthServer

from ._harness import Context, Row, ScenarioResult, judge, median, paired_ratio, percentile

TITLE = "stores at scale (FileStore, SQLiteStore)"
LAG_TARGET = 0.020


class LagMonitor:
    """The event loop's worst lag: a task asks to sleep 1 ms and notes how late it wakes."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, loop.time() - started - 0.001)

    def __enter__(self) -> LagMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def measure_store(
    name: str,
    make: Callable[[], TokenStore],
    server: FakeOAuthServer,
    n: int,
    hot: int,
    log: Callable[[str], None],
    *,
    cold_reads: bool = True,
) -> dict[str, Any]:
    provider = KeliwebProvider(server.client_id, server.client_secret, token_url=server.token_url)
    keys = [f"tenant-{i:06}" for i in range(n)]
    live = set(random.Random(5).sample(keys, hot))
    seeds = {
        key: server.issue_refresh_token() if key in live else f"rt-{key}-" + "x" * 96
        for key in keys
    }
    result: dict[str, Any] = {}
    async with TokenManager(store=make()) as tm:
        started = time.perf_counter()
        for start in range(0, n, 1000):
            chunk = keys[start : start + 1000]
            await asyncio.gather(*(tm.add(k, provider, refresh_token=seeds[k]) for k in chunk))
        result["add_s"] = time.perf_counter() - started
        log(f"[stores] {name}: {n:,} adds in {result['add_s']:.1f} s")
        before = server.token_requests
        with LagMonitor() as lag:
            started = time.perf_counter()
            # Callers arrive a hundred per loop iteration (a thousand started in one iteration
            # would be the caller's own stall, not the store's).
            calls = []
            for start in range(0, hot, 100):
                calls += [
                    asyncio.ensure_future(tm.get_token(k))
                    for k in sorted(live)[start : start + 100]
                ]
                await asyncio.sleep(0)
            tokens = await asyncio.gather(*calls)
            result["refresh_s"] = time.perf_counter() - started
        result["lag_s"] = lag.worst
        result["requests"] = server.token_requests - before
        assert all(t.access_token for t in tokens)
        log(f"[stores] {name}: {hot:,} refreshed at once in {result['refresh_s']:.2f} s")
    if not cold_reads:
        return result
    latencies = []
    async with TokenManager(store=make()) as cold:
        for key in sorted(live):
            await cold.add(key, provider)
        order = sorted(live)
        random.Random(7).shuffle(order)
        for key in order:
            started = time.perf_counter()
            await cold.get_token(key)
            latencies.append(time.perf_counter() - started)
    result["first_read_s"] = latencies[0]
    result["read_p50_s"] = percentile(latencies[1:], 50)
    result["read_p99_s"] = percentile(latencies[1:], 99)
    return result


def sealing_cost(repeats: int, count: int) -> dict[str, list[float]]:
    """Nanoseconds per record to encode + decode, plain and sealed, interleaved samples."""
    token = Token(
        access_token="eyJ" + "a" * 387,
        expires_at=time.time() + 3600,
        refresh_token="def50200" + "b" * 128,
        issued_at=time.time(),
        provider="keliweb",
    )
    codecs = {
        "plain": RecordCodec(None, "bench"),
        "sealed": RecordCodec(AESGCMCipher({"k": generate_key()}, primary="k"), "bench"),
    }
    samples: dict[str, list[float]] = {"plain": [], "sealed": []}
    for _ in range(repeats):
        for label, codec in codecs.items():
            started = time.perf_counter_ns()
            for i in range(count):
                key = f"tenant-{i}"
                codec.decode(key, json.loads(codec.dumps(key, token)), where="bench")
            samples[label].append((time.perf_counter_ns() - started) / count)
    return samples


async def encrypted_cold_reads(directory: Path, count: int, repeats: int) -> dict[str, list[float]]:
    """Nanoseconds per ``SQLiteStore.get``, with and without a cipher, interleaved samples."""
    cipher = AESGCMCipher({"k": generate_key()}, primary="k")
    stores = {
        "plain": SQLiteStore(directory / "plain.sqlite"),
        "sealed": SQLiteStore(directory / "sealed.sqlite", cipher=cipher),
    }
    token = Token(
        access_token="eyJ" + "a" * 387, expires_at=time.time() + 3600, refresh_token="r" * 136
    )
    keys = [f"tenant-{i}" for i in range(count)]
    for store in stores.values():
        await asyncio.gather(*(store.put(k, token) for k in keys))
    samples: dict[str, list[float]] = {"plain": [], "sealed": []}
    for round_ in range(repeats):
        order = list(stores.items())
        if round_ % 2:
            order.reverse()
        for label, store in order:
            started = time.perf_counter_ns()
            for key in keys:
                await store.get(key)
            samples[label].append((time.perf_counter_ns() - started) / count)
    for store in stores.values():
        await store.aclose()
    return samples


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(100_000, 500)
    hot = ctx.pick(1_000, 50)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="asynctoken-bench-") as tmp:
        directory = Path(tmp)
        async with FakeOAuthServer("keliweb", expires_in=3600) as server:
            baseline = await measure_store(
                "MemoryStore", MemoryStore, server, hot, hot, ctx.log, cold_reads=False
            )
            rows.append(
                Row(
                    TITLE,
                    f"MemoryStore (no store I/O): worst event-loop lag, {hot:,} refreshed at once",
                    f"{baseline['lag_s'] * 1e3:.1f} ms",
                    "the refreshes' own work; the baseline of the lag rows below",
                    "—",
                    "info",
                    values=baseline,
                )
            )
            small = ctx.pick(10_000, 200)
            runs: list[tuple[str, Path, int]] = [
                ("FileStore", directory / "small.json", small),
                ("FileStore", directory / "tokens.json", n),
                ("SQLiteStore", directory / "tokens.sqlite", n),
            ]
            for name, where, count in runs:
                kind = FileStore if name == "FileStore" else SQLiteStore

                def make(kind: type[TokenStore] = kind, where: Path = where) -> TokenStore:
                    return kind(where)  # type: ignore[call-arg]

                data = await measure_store(name, make, server, count, hot, ctx.log)
                parse = " (parses the file)" if name == "FileStore" else ""
                size = os.path.getsize(where)
                rows += [
                    Row(
                        TITLE,
                        f"{name}: {count:,} adds, 1,000 at a time",
                        f"{data['add_s']:.1f} s",
                        f"{data['add_s'] / count * 1e6:.0f} µs per add; store {size / 1e6:.0f} MB",
                        "—",
                        "info",
                        values=data,
                    ),
                    Row(
                        TITLE,
                        f"{name}: {hot:,} credentials refreshed at once (of {count:,})",
                        f"{data['refresh_s']:.2f} s",
                        f"{data['requests']:,} token requests",
                        f"{hot:,} requests",
                        judge(data["requests"] == hot),
                        values=data,
                    ),
                    Row(
                        TITLE,
                        f"{name}: worst event-loop lag during those refreshes",
                        f"{data['lag_s'] * 1e3:.1f} ms",
                        f"MemoryStore {baseline['lag_s'] * 1e3:.1f} ms "
                        f"({(data['lag_s'] - baseline['lag_s']) * 1e3:+.1f} ms)",
                        "≤ 20 ms over MemoryStore",
                        "info"
                        if ctx.smoke
                        else judge(data["lag_s"] - baseline["lag_s"] <= LAG_TARGET),
                        values=data,
                    ),
                    Row(
                        TITLE,
                        f"{name}: cold read (new process state), get_token",
                        f"p50 {data['read_p50_s'] * 1e6:.0f} µs, "
                        f"p99 {data['read_p99_s'] * 1e6:.0f} µs",
                        f"first read {data['first_read_s'] * 1e3:.1f} ms{parse}",
                        "—",
                        "info",
                        values=data,
                    ),
                ]
        seal = sealing_cost(ctx.repeats, ctx.pick(20_000, 200))
        rows.append(
            Row(
                TITLE,
                "seal + open one record (AES-256-GCM)",
                f"{median(seal['sealed']) / 1e3:.1f} µs",
                f"plain JSON encode + decode {median(seal['plain']) / 1e3:.1f} µs",
                "—",
                "info",
                ratio=paired_ratio(seal["sealed"], seal["plain"]),
                detail="per record, both directions; the difference is the encryption's cost",
                values=seal,
            )
        )
        reads = await encrypted_cold_reads(directory, ctx.pick(2_000, 50), ctx.repeats)
        ratio = paired_ratio(reads["sealed"], reads["plain"])
        rows.append(
            Row(
                TITLE,
                "cold read, SQLiteStore.get, encrypted vs plain",
                f"{median(reads['sealed']) / 1e3:.0f} µs",
                f"plain {median(reads['plain']) / 1e3:.0f} µs ({ratio:.2f}×)",
                "—",
                "info",
                ratio=ratio,
                values=reads,
            )
        )
    return ScenarioResult("stores", TITLE, rows)
