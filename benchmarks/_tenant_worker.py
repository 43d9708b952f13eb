"""One worker process of the multi-tenant scenario (see :mod:`benchmarks.multi_tenant`).

Usage: ``python -m benchmarks._tenant_worker '<json config>'``. Prints ``ready``, waits for
``go``, then:

1. workload: ``concurrency`` tasks consume a Zipf-like sequence of ``requests`` hot-tenant keys,
   each one ``await tm.get_token(key)``; then the process RSS is read;
2. hot path: interleaved samples of ``get_token`` over that sequence (all cached now), over a
   single key, and of the floor coroutine over the same two sequences;
3. cold tenants (if any are given): alternately, one ``get_token`` of a tenant this process never
   saw, and one plain ``GET`` of another tenant's record on its own redis-py client.

Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any

import psutil
import redis.asyncio

from asynctoken import KeliwebProvider, TokenManager
from asynctoken.stores import RedisStore

from ._harness import Batch, interleaved, now_ns, percentile
from ._infra import worker_handshake
from .hot_path import CachedToken, make_floor


def zipf_sequence(keys: list[str], n: int, exponent: float, seed: int) -> list[str]:
    """``n`` draws from ``keys`` with P(rank r) ∝ 1 / r**exponent (rank 1 = keys[0])."""
    weights = list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, len(keys) + 1)))
    return random.Random(seed).choices(keys, cum_weights=weights, k=n)


def get_batch(tm: TokenManager, sequence: list[str]) -> Batch:
    keys = itertools.cycle(
        sequence
    )  # each batch goes on where the last one stopped: every key is visited

    async def batch(n: int) -> int:
        start = now_ns()
        for key in itertools.islice(keys, n):
            await tm.get_token(key)
        return now_ns() - start

    return batch


def floor_batch(floor: Any, sequence: list[str]) -> Batch:
    keys = itertools.cycle(sequence)

    async def batch(n: int) -> int:
        start = now_ns()
        for key in itertools.islice(keys, n):
            await floor(key)
        return now_ns() - start

    return batch


async def work(config: dict[str, Any]) -> dict[str, Any]:
    prefix = config["prefix"]
    hot = [f"tenant-{i:07d}" for i in range(int(config["hot"]))]
    sequence = zipf_sequence(hot, int(config["requests"]), float(config["zipf"]), config["seed"])
    expired = set(config["expired"])
    provider = KeliwebProvider(
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        token_url=config["token_url"],
    )
    store = RedisStore(config["redis_url"], prefix=prefix)
    raw = redis.asyncio.Redis.from_url(config["redis_url"])
    errors: dict[str, int] = {}
    async with TokenManager(
        store=store, provider_factory=lambda key: provider, cache_size=int(config["cache_size"])
    ) as tm:
        await raw.ping()
        await store.get("warm-up")  # both clients connected before timing anything
        await worker_handshake()

        # 1. the workload
        feed = iter(sequence)

        async def consumer() -> None:
            for key in feed:
                try:
                    await tm.get_token(key)
                except Exception as exc:  # counted and reported
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(consumer() for _ in range(int(config["concurrency"]))))
        workload_s = time.perf_counter() - started
        rss = psutil.Process().memory_info().rss

        # 2. the hot path
        # One deadline object per credential, as any cache of many tokens has.
        stale_at = time.monotonic() + 3000.0
        floor = make_floor(
            {
                key: CachedToken(await tm.get_token(key), stale_at + i * 1e-6)
                for i, key in enumerate(sorted(set(sequence)))
            }
        )
        single = [sequence[0]] * len(sequence)
        samples = await interleaved(
            {
                "zipf": get_batch(tm, sequence),
                "one": get_batch(tm, single),
                "floor_zipf": floor_batch(floor, sequence),
                "floor_one": floor_batch(floor, single),
            },
            float(config["target_ns"]),
            int(config["repeats"]),
        )

        # 3. cold tenants vs plain GETs, alternating which goes first
        cold: list[float] = []
        plain: list[float] = []
        for i, (cold_key, raw_key) in enumerate(
            zip(config["cold_keys"], config["raw_keys"], strict=True)
        ):
            for which in ("cold", "plain") if i % 2 == 0 else ("plain", "cold"):
                start = now_ns()
                if which == "cold":
                    await tm.get_token(cold_key)
                    cold.append(now_ns() - start)
                else:
                    await raw.get(prefix + "cred:" + raw_key)
                    plain.append(now_ns() - start)
    await raw.aclose()
    rounds = int(config["repeats"])
    size = max(1, len(cold) // rounds)
    chunks = [(cold[i : i + size], plain[i : i + size]) for i in range(0, len(cold), size)]
    return {
        "workload_s": workload_s,
        "rss": rss,
        "errors": errors,
        "requested_expired": sorted(expired.intersection(sequence)),
        "distinct_requested": len(set(sequence)),
        "samples": samples,
        "cold_rounds": [
            {
                "cold_p50": percentile(c, 50),
                "cold_p99": percentile(c, 99),
                "plain_p50": percentile(p, 50),
                "plain_p99": percentile(p, 99),
            }
            for c, p in chunks
            if c and p
        ],
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(work(config))), flush=True)


if __name__ == "__main__":
    main()
