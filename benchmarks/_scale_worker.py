"""The scale scenario's measurements, in a fresh process so that RSS means something.

Usage: ``python -m benchmarks._scale_worker '{"n": 100000, "target_ns": 2e7, "repeats": 7}'``.
Prints ``ready``, waits for ``go``, then one JSON line.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import secrets
import sys
import time
import tracemalloc
from collections.abc import Callable
from itertools import cycle, islice
from typing import Any

import psutil

from asynctoken import KeliwebProvider, Token, TokenManager
from asynctoken.testing import FakeOAuthServer

from ._harness import Batch, interleaved, now_ns
from ._infra import worker_handshake
from .hot_path import CachedToken, make_floor


def token_maker() -> Callable[[], Token]:
    """Tokens shaped exactly like the fake Keliweb server's (same field lengths), each with its
    own strings, made without keeping anything in a server's registry."""
    sample = FakeOAuthServer("keliweb").issue_token()
    head, _, signature = sample.access_token.rpartition(".")
    signature_bytes = len(signature) * 3 // 4
    refresh_bytes = (len(sample.refresh_token or "") - len("def50200")) // 2

    def make() -> Token:
        now = time.time()
        return Token(
            access_token=f"{head}.{secrets.token_urlsafe(signature_bytes)}",
            expires_at=now + 3600,
            refresh_token="def50200" + secrets.token_hex(refresh_bytes),
            issued_at=now,
            provider="keliweb",
        )

    return make


async def populate(n: int, make: Callable[[], Token]) -> tuple[TokenManager, list[str]]:
    """A manager with ``n`` registered credentials, each with a fresh token in the store and in
    the hot cache (loaded by one ``get_token``: a store read, no request)."""
    provider = KeliwebProvider(
        client_id="client", client_secret="secret", token_url="http://127.0.0.1:9/oauth/token"
    )
    tm = TokenManager(cache_size=n)
    keys: list[str] = []
    for i in range(n):
        key = f"tenant-{i:07d}"
        await tm.add(key, provider)
        await tm.store.put(key, make())
        await tm.get_token(key)
        keys.append(key)
    return tm, keys


def get_batch(tm: TokenManager, sequence: list[str]) -> Batch:
    keys = cycle(sequence)  # each batch goes on where the last one stopped: every key is visited

    async def batch(n: int) -> int:
        start = now_ns()
        for key in islice(keys, n):
            await tm.get_token(key)
        return now_ns() - start

    return batch


def floor_batch(floor: Any, sequence: list[str]) -> Batch:
    keys = cycle(sequence)

    async def batch(n: int) -> int:
        start = now_ns()
        for key in islice(keys, n):
            await floor(key)
        return now_ns() - start

    return batch


async def measure(config: dict[str, Any]) -> dict[str, Any]:
    n = int(config["n"])
    make = token_maker()
    await worker_handshake()
    process = psutil.Process()

    # Pass 1: RSS, then get latency.
    gc.collect()
    rss_before = process.memory_info().rss
    tm, keys = await populate(n, make)
    gc.collect()
    rss_after = process.memory_info().rss
    order = keys[:]
    random.Random(1).shuffle(order)
    # One deadline object per credential, as any cache of many tokens has.
    stale_at = time.monotonic() + 3000.0
    floor = make_floor(
        {
            key: CachedToken(await tm.get_token(key), stale_at + i * 1e-6)
            for i, key in enumerate(keys)
        }
    )
    single = [keys[0]] * len(order)
    samples = await interleaved(
        {
            "many": get_batch(tm, order),
            "one": get_batch(tm, single),
            "floor_many": floor_batch(floor, order),
            "floor_one": floor_batch(floor, single),
        },
        float(config["target_ns"]),
        int(config["repeats"]),
    )
    cached = len(tm._hot)  # private, read only: proves every credential was in the hot cache
    await tm.aclose()
    del tm, floor
    gc.collect()

    # Pass 2: the exact Python heap cost, with tracemalloc (slower, so not timed).
    tracemalloc.start()
    heap_before = tracemalloc.get_traced_memory()[0]
    tm, keys = await populate(n, make)
    gc.collect()
    heap_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    sample = await tm.get_token(keys[0])
    strings = (
        sys.getsizeof(sample.access_token)
        + sys.getsizeof(sample.refresh_token)
        + sys.getsizeof(keys[0])
    )
    await tm.aclose()
    return {
        "n": n,
        "cached": cached,
        "rss_per_credential": (rss_after - rss_before) / n,
        "heap_per_credential": (heap_after - heap_before) / n,
        "strings_per_credential": strings,
        "samples": samples,
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(measure(config))), flush=True)


if __name__ == "__main__":
    main()
