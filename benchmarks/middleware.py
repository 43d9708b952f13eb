"""Client integrations' throughput: requests per second through ``tm.middleware(key)`` (aiohttp)
and ``TokenAuth`` (httpx) against a loopback API, each compared with the same client setup
sending a static ``Authorization`` header.

The API is the fake server's protected endpoint (``/api/me``, it checks the bearer token), in its
own process. aiohttp: two ``ClientSession`` objects with identical connectors, one with
``middlewares=(tm.middleware(key),)``, one with ``headers={"Authorization": <same token>}``.
httpx: two ``AsyncClient`` objects with identical limits, one with ``auth=TokenAuth(tm, key)``,
one with the static header. Each sample sends a fixed number of GETs from 16 concurrent tasks
(each reads the body); samples alternate between the two clients of a pair. Client CPU time per
request is reported too: it shows the client-side cost even when the server is what limits
throughput.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from asynctoken import KeliwebProvider, TokenManager

from ._harness import (
    Context,
    Row,
    ScenarioResult,
    fmt_ns,
    judge,
    median,
    now_ns,
    paired_ratio,
)
from ._infra import FakeServerProcess

TITLE = "middleware and httpx auth throughput (loopback API)"
TARGET = 0.95
CONCURRENCY = 16
# httpx's connection pool gets slower as concurrency grows (on this box ~950 req/s with one task,
# ~400 with 16): a few tasks measure the auth's overhead, not the pool's contention.
HTTPX_CONCURRENCY = 4


Get = Callable[[str], Awaitable[int]]  # one GET, body read; returns the status


def make_batch(
    get: Get, url: str, failures: list[int], concurrency: int = CONCURRENCY
) -> Callable[[int], Awaitable[tuple[int, float]]]:
    """A sample: ``n`` GETs from ``concurrency`` tasks; returns (wall ns, client CPU seconds)."""

    async def worker(count: int) -> None:
        for _ in range(count):
            status = await get(url)
            if status != 200:
                failures.append(status)

    async def batch(n: int) -> tuple[int, float]:
        per_task, rest = divmod(n, concurrency)
        counts = [per_task + (1 if i < rest else 0) for i in range(concurrency)]
        gc.collect()
        cpu = time.process_time()
        start = now_ns()
        await asyncio.gather(*(worker(count) for count in counts))
        return now_ns() - start, time.process_time() - cpu

    return batch


def aiohttp_get(session: aiohttp.ClientSession) -> Get:
    async def get(url: str) -> int:
        async with session.get(url) as response:
            await response.read()
            return response.status

    return get


def httpx_get(client: Any) -> Get:
    async def get(url: str) -> int:
        response = await client.get(url)  # reads the body
        status: int = response.status_code
        return status

    return get


async def compare(
    ctx: Context,
    batches: Mapping[str, Callable[[int], Awaitable[tuple[int, float]]]],
    n: int,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved samples of two contenders: requests/s and client CPU ns per request."""
    rates: dict[str, list[float]] = {name: [] for name in batches}
    cpu: dict[str, list[float]] = {name: [] for name in batches}
    for batch in batches.values():  # warm-up: connections open, code paths hot
        await batch(min(n, 500))
    names = list(batches)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            wall, seconds = await batches[name](n)
            rates[name].append(n / (wall / 1e9))
            cpu[name].append(seconds * 1e9 / n)
        ctx.log("  " + ", ".join(f"{name} {rates[name][-1]:,.0f} req/s" for name in names))
    return rates, cpu


def throughput_row(
    metric: str,
    ours: str,
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    failures: int,
    api_requests: int,
) -> Row:
    ratio = paired_ratio(rates[ours], rates["static"])
    cpu_ratio = paired_ratio(cpu[ours], cpu["static"])
    return Row(
        TITLE,
        metric,
        f"{median(rates[ours]):,.0f} req/s",
        f"static header {median(rates['static']):,.0f} req/s",
        f"≥ {TARGET}× static",
        judge(ratio >= TARGET and not failures),
        ratio,
        f"client CPU per request {fmt_ns(median(cpu[ours]))} vs "
        f"{fmt_ns(median(cpu['static']))} ({cpu_ratio:.2f}×); non-200 answers: "
        f"{failures} of {api_requests:,}",
        {
            f"{ours}_rps": rates[ours],
            "static_rps": rates["static"],
            f"{ours}_cpu_ns": cpu[ours],
            "static_cpu_ns": cpu["static"],
            "failures": failures,
        },
        limit=TARGET,
        at_least=True,
    )


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(1_000, 100)
    repeats = ctx.pick(31, 1)  # short samples, many rounds: pairs close in time on a noisy box
    rows: list[Row] = []
    async with FakeServerProcess() as srv, TokenManager() as tm:
        provider = KeliwebProvider(
            client_id=srv.client_id, client_secret=srv.client_secret, token_url=srv.token_url
        )
        await tm.add("api", provider, refresh_token=await srv.refresh_token())
        token = await tm.get_token("api")

        failures: list[int] = []
        with_mw = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            middlewares=(tm.middleware("api"),),
        )
        static = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            headers={"Authorization": token.authorization},
        )
        try:
            rates, cpu = await compare(
                ctx,
                {
                    "middleware": make_batch(aiohttp_get(with_mw), srv.api_url, failures),
                    "static": make_batch(aiohttp_get(static), srv.api_url, failures),
                },
                n,
                repeats,
            )
        finally:
            await with_mw.close()
            await static.close()
        api_requests = (await srv.stats())["api_requests"]
        rows.append(
            throughput_row(
                "aiohttp middleware, requests per second",
                "middleware",
                rates,
                cpu,
                len(failures),
                api_requests,
            )
        )
        # httpx is several times slower per request: smaller samples, the same number of rounds.
        rows.append(await httpx_row(ctx, tm, srv, token.authorization, n // 4, repeats))
    notes = [
        f"{n:,} GETs per sample from {CONCURRENCY} concurrent tasks (httpx: {n // 4:,} from "
        f"{HTTPX_CONCURRENCY}, its pool slows down with more), each reading the JSON "
        f"body; {repeats} samples per client, alternating within each pair; ratio = median of "
        "per-round ratios. The API server (fake server's /api/me, validates the bearer token) "
        "runs in its own process: on 2 cores, client and server each get about one.",
    ]
    return ScenarioResult("middleware", TITLE, rows, notes)


async def httpx_row(
    ctx: Context,
    tm: TokenManager,
    srv: FakeServerProcess,
    authorization: str,
    n: int,
    repeats: int,
) -> Row:
    """``httpx.AsyncClient(auth=TokenAuth(tm, key))`` against the same client with the header."""
    metric = "httpx TokenAuth, requests per second"
    try:
        import httpx

        from asynctoken.httpx import TokenAuth
    except ImportError:
        return Row(TITLE, metric, "", "", f"≥ {TARGET}× static", "not installed")
    failures: list[int] = []
    before = (await srv.stats())["api_requests"]
    limits = httpx.Limits(
        max_connections=HTTPX_CONCURRENCY, max_keepalive_connections=HTTPX_CONCURRENCY
    )
    async with (
        httpx.AsyncClient(limits=limits, auth=TokenAuth(tm, "api")) as with_auth,
        httpx.AsyncClient(limits=limits, headers={"Authorization": authorization}) as static,
    ):
        rates, cpu = await compare(
            ctx,
            {
                "token_auth": make_batch(
                    httpx_get(with_auth), srv.api_url, failures, HTTPX_CONCURRENCY
                ),
                "static": make_batch(httpx_get(static), srv.api_url, failures, HTTPX_CONCURRENCY),
            },
            n,
            repeats,
        )
    api_requests = (await srv.stats())["api_requests"] - before
    return throughput_row(metric, "token_auth", rates, cpu, len(failures), api_requests)
