"""Multi-tenant: 1,000,000 credentials in a real local Redis, 10,000 hot tenants, 2 processes.

Layout written by the bulk load is exactly :class:`~asynctoken.stores.RedisStore`'s: key
``{prefix}cred:{tenant}``, value the compact JSON of ``{"v": 1, **Token.to_dict()}``. Records
are built from a template (checked byte for byte against the real encoding, and read back through
``RedisStore.get``) and sent with pipelined ``MSET`` batches.

Two phases, each with two fresh worker processes (:mod:`benchmarks._tenant_worker`) running
``TokenManager(store=RedisStore(url), provider_factory=lambda key: provider, cache_size=20,000)``
on the same Zipf-like request sequence (same seeds in both phases):

* phase A: only the 10,000 hot tenants are stored;
* phase B: the other 990,000 are loaded too; cold-tenant latency is measured here.

In each phase 100 hot tenants (fresh random picks) are stored with an expired access token and a
refresh token the fake server (in this process, 50 ms latency) accepts: the only token requests
expected are for those of them that the workers actually request.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from asynctoken import Token
from asynctoken.stores import RedisStore
from asynctoken.stores._redis import RECORD_VERSION
from asynctoken.testing import FakeOAuthServer

from ._harness import (
    Context,
    Row,
    ScenarioResult,
    fmt_bytes,
    fmt_ns,
    judge,
    median,
    paired_ratio,
)
from ._infra import delete_prefix, run_workers

TITLE = "multi-tenant (Redis, Zipf hot set, 2 processes)"
HOT_TARGET = 1.25
COLD_TARGET = 1.5
RSS_TARGET = 1.10
WORKERS = 2
LATENCY = 0.05
CHUNK = 2_000

TEMPLATE = (
    '{"v":%d,"access_token":"%s","token_type":"Bearer","expires_at":%r,"refresh_token":"%s",'
    '"scope":null,"extra":{},"issued_at":%r,"provider":"keliweb"}'
)


class Records:
    """Builds RedisStore records for tenants, shaped like the fake Keliweb server's tokens."""

    def __init__(self, sample: Token) -> None:
        head, _, signature = sample.access_token.rpartition(".")
        self._head = head
        self._signature_bytes = len(signature) * 3 // 4
        self._refresh_bytes = (len(sample.refresh_token or "") - len("def50200")) // 2

    def token(self, *, expired: bool = False, refresh_token: str | None = None) -> Token:
        now = time.time()
        issued = now - 3660 if expired else now
        return Token(
            access_token=f"{self._head}.{secrets.token_urlsafe(self._signature_bytes)}",
            expires_at=issued + 3600,
            refresh_token=refresh_token or "def50200" + secrets.token_hex(self._refresh_bytes),
            issued_at=issued,
            provider="keliweb",
        )

    @staticmethod
    def encode(token: Token) -> str:
        """The record, from the template (fast); equal to RedisStore's own encoding."""
        return TEMPLATE % (
            RECORD_VERSION,
            token.access_token,
            token.expires_at,
            token.refresh_token,
            token.issued_at,
        )

    @staticmethod
    def reference(token: Token) -> str:
        """The record as RedisStore encodes it (slow, for checking the template)."""
        record = {"v": RECORD_VERSION, **token.to_dict()}
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def fresh(self, now: float) -> str:
        """A fresh tenant's record, straight from the template (the bulk-load path)."""
        return TEMPLATE % (
            RECORD_VERSION,
            f"{self._head}.{secrets.token_urlsafe(self._signature_bytes)}",
            now + 3600,
            "def50200" + secrets.token_hex(self._refresh_bytes),
            now,
        )


def tenant(i: int) -> str:
    return f"tenant-{i:07d}"


def bulk_load(client: redis.Redis, prefix: str, indices: Iterable[int], records: Records) -> int:
    """Pipelined MSETs of fresh records, CHUNK keys per MSET, 10 MSETs per round trip."""
    count = 0
    now = time.time()
    pipe = client.pipeline(transaction=False)
    batch: dict[str, str] = {}
    for i in indices:
        batch[f"{prefix}cred:{tenant(i)}"] = records.fresh(now)
        if len(batch) == CHUNK:
            pipe.mset(batch)
            count += len(batch)
            batch = {}
            if len(pipe) == 10:
                pipe.execute()
    if batch:
        pipe.mset(batch)
        count += len(batch)
    pipe.execute()
    return count


def arm_expired(
    client: redis.Redis,
    prefix: str,
    server: FakeOAuthServer,
    records: Records,
    picks: list[int],
) -> list[str]:
    """Store an expired access token + a valid refresh token for each picked tenant."""
    pipe = client.pipeline(transaction=False)
    for i in picks:
        token = records.token(expired=True, refresh_token=server.issue_refresh_token())
        pipe.set(f"{prefix}cred:{tenant(i)}", records.encode(token))
    pipe.execute()
    return [tenant(i) for i in picks]


async def check_layout(url: str, prefix: str, records: Records) -> None:
    """The template equals RedisStore's encoding, and RedisStore reads it back identically."""
    token = records.token()
    assert records.encode(token) == records.reference(token), "record template drifted"
    with redis.Redis.from_url(url) as client:
        client.set(f"{prefix}cred:layout-check", records.encode(token))
    store = RedisStore(url, prefix=prefix)
    try:
        assert await store.get("layout-check") == token, "RedisStore reads another layout"
        assert await store.delete("layout-check")
    finally:
        await store.aclose()


async def run_phase(
    server: FakeOAuthServer, base: dict[str, Any], expired: list[str], cold: list[list[str]]
) -> dict[str, Any]:
    requests, reuse = server.token_requests, server.reuse_detected
    configs = []
    for worker in range(WORKERS):
        keys = cold[worker] if cold else []
        half = len(keys) // 2
        configs.append(
            dict(
                base, seed=worker + 1, expired=expired, cold_keys=keys[:half], raw_keys=keys[half:]
            )
        )
    results = await run_workers("benchmarks._tenant_worker", configs, timeout=600)
    requested = set().union(*(result["requested_expired"] for result in results))
    return {
        "workers": results,
        "token_requests": server.token_requests - requests,
        "expected_requests": len(requested),
        "reuse_detected": server.reuse_detected - reuse,
        "errors": sum(sum(result["errors"].values()) for result in results),
    }


async def run(ctx: Context) -> ScenarioResult:
    total = ctx.pick(1_000_000, 1_000)
    hot = ctx.pick(10_000, 200)
    expired_count = ctx.pick(100, 5)
    probes = ctx.pick(2_000, 50)
    url = ctx.redis_url()
    prefix = f"bench-tenants:{uuid.uuid4().hex[:8]}:"
    rng = random.Random(11)
    client = redis.Redis.from_url(url)
    base: dict[str, Any] = {
        "redis_url": url,
        "prefix": prefix,
        "hot": hot,
        "requests": ctx.pick(200_000, 2_000),
        "zipf": 1.0,
        "concurrency": 50,
        "cache_size": 2 * hot,
        "target_ns": ctx.pick(20e6, 2e6),
        "repeats": ctx.pick(10, 1),
    }
    try:
        async with FakeOAuthServer("keliweb", expires_in=3600, delay=LATENCY) as server:
            records = Records(server.issue_token())
            base |= {
                "token_url": server.token_url,
                "client_id": server.client_id,
                "client_secret": server.client_secret,
            }
            await check_layout(url, prefix, records)

            bulk_load(client, prefix, range(hot), records)
            expired_a = arm_expired(
                client, prefix, server, records, rng.sample(range(hot), expired_count)
            )
            ctx.log(f"  phase A: {hot:,} stored; workers running")
            phase_a = await run_phase(server, base, expired_a, [])

            started = time.perf_counter()
            loaded = await asyncio.to_thread(bulk_load, client, prefix, range(hot, total), records)
            load_s = time.perf_counter() - started
            stored = client.dbsize()
            used = client.info("memory")["used_memory"]
            ctx.log(f"  loaded {loaded:,} more credentials in {load_s:.1f} s")
            expired_b = arm_expired(
                client, prefix, server, records, rng.sample(range(hot), expired_count)
            )
            cold_pool = rng.sample(range(hot, total), WORKERS * probes * 2)
            cold = [
                [tenant(i) for i in cold_pool[w * probes * 2 : (w + 1) * probes * 2]]
                for w in range(WORKERS)
            ]
            ctx.log(f"  phase B: {total:,} stored; workers running")
            phase_b = await run_phase(server, base, expired_b, cold)
    finally:
        cleanup(client, url, prefix, owned=ctx.owns_redis())
        client.close()
    return report(ctx, total, hot, phase_a, phase_b, load_s, loaded, stored, used, base)


def cleanup(client: redis.Redis, url: str, prefix: str, *, owned: bool) -> None:
    """Remove this run's keys: FLUSHDB on our own throw-away server, else UNLINK by prefix."""
    if owned:
        client.flushdb(asynchronous=True)
    else:
        delete_prefix(url, prefix)


def report(
    ctx: Context,
    total: int,
    hot: int,
    phase_a: dict[str, Any],
    phase_b: dict[str, Any],
    load_s: float,
    loaded: int,
    stored: int,
    used: int,
    base: dict[str, Any],
) -> ScenarioResult:
    workers_b = phase_b["workers"]
    zipf = [x for w in workers_b for x in w["samples"]["zipf"]]
    one = [x for w in workers_b for x in w["samples"]["one"]]
    floor_zipf = [x for w in workers_b for x in w["samples"]["floor_zipf"]]
    floor_one = [x for w in workers_b for x in w["samples"]["floor_one"]]
    hot_ratio = paired_ratio(zipf, one)
    rounds = [r for w in workers_b for r in w["cold_rounds"]]
    cold = {q: [r[f"cold_{q}"] for r in rounds] for q in ("p50", "p99")}
    plain = {q: [r[f"plain_{q}"] for r in rounds] for q in ("p50", "p99")}
    rss_a = [w["rss"] for w in phase_a["workers"]]
    rss_b = [w["rss"] for w in workers_b]
    rss_ratio = max(b / a for a, b in zip(rss_a, rss_b, strict=True))
    requests_ok = all(
        p["token_requests"] == p["expected_requests"]
        and not p["reuse_detected"]
        and not p["errors"]
        for p in (phase_a, phase_b)
    )
    rows = [
        Row(
            TITLE,
            f"hot path, Zipf over {hot:,} of {total:,} tenants",
            fmt_ns(median(zipf)),
            f"single-credential hot path {fmt_ns(median(one))}",
            f"equal to the single-credential hot path (≤ {HOT_TARGET}×)",
            judge(hot_ratio <= HOT_TARGET),
            hot_ratio,
            f"floor over the same Zipf sequence {fmt_ns(median(floor_zipf))} vs one key "
            f"{fmt_ns(median(floor_one))} ({paired_ratio(floor_zipf, floor_one):.2f}×); "
            f"asynctoken/floor: Zipf {paired_ratio(zipf, floor_zipf):.2f}×, one key "
            f"{paired_ratio(one, floor_one):.2f}×",
            {
                "zipf_ns": zipf,
                "one_ns": one,
                "floor_zipf_ns": floor_zipf,
                "floor_one_ns": floor_one,
            },
            limit=HOT_TARGET,
        )
    ]
    for q in ("p50", "p99"):
        ratio = paired_ratio(cold[q], plain[q])
        rows.append(
            Row(
                TITLE,
                f"cold-tenant get_token {q}",
                fmt_ns(median(cold[q])),
                f"plain Redis GET {q} {fmt_ns(median(plain[q]))}",
                f"≤ {COLD_TARGET}× GET",
                judge(ratio <= COLD_TARGET),
                ratio,
                f"{len(rounds)} rounds (2 processes), medians of per-round {q}",
                {"cold_ns": cold[q], "plain_ns": plain[q]},
                limit=COLD_TARGET,
            )
        )
    rows.append(
        Row(
            TITLE,
            f"worker RSS, {total:,} vs {hot:,} stored",
            fmt_bytes(max(rss_b)),
            f"{fmt_bytes(max(rss_a))} with {hot:,} stored",
            f"flat (≤ {RSS_TARGET}×)",
            judge(rss_ratio <= RSS_TARGET),
            rss_ratio,
            "same request sequence in both phases; RSS read right after the workload",
            {"rss_10k": rss_a, "rss_1m": rss_b},
            limit=RSS_TARGET,
        )
    )
    reuse = phase_a["reuse_detected"] + phase_b["reuse_detected"]
    errors = phase_a["errors"] + phase_b["errors"]
    rows.append(
        Row(
            TITLE,
            "token requests",
            f"{phase_b['token_requests']} ({phase_a['token_requests']} in phase A)",
            f"{phase_b['expected_requests']} expired tenants requested "
            f"({phase_a['expected_requests']} in phase A)",
            "only for tenants whose token expired",
            judge(requests_ok),
            None,
            f"refresh-token reuse detected {reuse}; failed get_token calls {errors}",
            {
                "phase_a": {k: v for k, v in phase_a.items() if k != "workers"},
                "phase_b": {k: v for k, v in phase_b.items() if k != "workers"},
            },
        )
    )
    rows.append(
        Row(
            TITLE,
            "bulk load (pipelined MSET)",
            f"{loaded:,} records in {load_s:.1f} s",
            f"{stored:,} keys, Redis used_memory {fmt_bytes(used)}",
            "—",
            "info",
            None,
            f"workload per worker: {base['requests']:,} get_token calls, "
            f"{base['concurrency']} tasks, "
            f"{median([w['workload_s'] for w in workers_b]):.2f} s (phase B)",
        )
    )
    notes = [
        f"Tenants tenant-0000000…; hot = the first {hot:,}, requested with P(rank r) ∝ 1/r "
        f"(Zipf s=1), {base['requests']:,} requests per process by {base['concurrency']} "
        f"tasks; cache_size={base['cache_size']:,}. Tokens shaped like the fake Keliweb "
        "server's (700-byte records). Hot path: interleaved samples of get_token over the "
        "Zipf sequence and over one key, after the workload, in each process; ratio = median "
        "of per-round ratios over both processes.",
        "Cold tenants: keys outside the hot set that the process never saw; each get_token "
        "(cache miss: one store GET, JSON decode, cache insert) alternates with a plain "
        "`await redis.get(key)` of another cold record on a separate redis.asyncio client "
        "(same library, same server).",
    ]
    if ctx.smoke:
        notes.append("Smoke mode: 1,000 credentials instead of 1,000,000.")
    return ScenarioResult("multi_tenant", TITLE, rows, notes)
