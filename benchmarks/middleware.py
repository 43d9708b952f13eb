"""Middleware throughput: requests per second through ``tm.middleware(key)`` against a loopback
API, compared with the same session setup sending a static ``Authorization`` header.

The API is the fake server's protected endpoint (``/api/me``, it checks the bearer token), in its
own process. Two ``aiohttp.ClientSession`` objects with identical connectors: one with
``middlewares=(tm.middleware(key),)``, one with ``headers={"Authorization": <same token>}``.
Each sample sends a fixed number of GETs from 16 concurrent tasks (each reads the body); samples
alternate between the two sessions. Client CPU time per request is reported too: it shows the
client-side cost even when the server is what limits throughput.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

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

TITLE = "middleware throughput (loopback API)"
TARGET = 0.95
CONCURRENCY = 16


def make_batch(
    session: aiohttp.ClientSession, url: str, failures: list[int]
) -> Callable[[int], Awaitable[tuple[int, float]]]:
    """A sample: ``n`` GETs from CONCURRENCY tasks; returns (wall ns, client CPU seconds)."""

    async def worker(count: int) -> None:
        for _ in range(count):
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    failures.append(response.status)

    async def batch(n: int) -> tuple[int, float]:
        per_task, rest = divmod(n, CONCURRENCY)
        counts = [per_task + (1 if i < rest else 0) for i in range(CONCURRENCY)]
        gc.collect()
        cpu = time.process_time()
        start = now_ns()
        await asyncio.gather(*(worker(count) for count in counts))
        return now_ns() - start, time.process_time() - cpu

    return batch


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(1_000, 100)
    repeats = ctx.pick(31, 1)  # short samples, many rounds: pairs close in time on a noisy box
    failures: list[int] = []
    rates: dict[str, list[float]] = {"middleware": [], "static": []}
    cpu: dict[str, list[float]] = {"middleware": [], "static": []}
    async with FakeServerProcess() as srv, TokenManager() as tm:
        provider = KeliwebProvider(
            client_id=srv.client_id, client_secret=srv.client_secret, token_url=srv.token_url
        )
        await tm.add("api", provider, refresh_token=await srv.refresh_token())
        token = await tm.get_token("api")
        with_mw = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            middlewares=(tm.middleware("api"),),
        )
        static = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY),
            headers={"Authorization": token.authorization},
        )
        try:
            batches = {
                "middleware": make_batch(with_mw, srv.api_url, failures),
                "static": make_batch(static, srv.api_url, failures),
            }
            for batch in batches.values():  # warm-up: connections open, code paths hot
                await batch(min(n, 500))
            names = list(batches)
            for round_ in range(repeats):
                for name in names if round_ % 2 == 0 else names[::-1]:
                    wall, seconds = await batches[name](n)
                    rates[name].append(n / (wall / 1e9))
                    cpu[name].append(seconds * 1e9 / n)
                ctx.log(
                    f"  middleware {rates['middleware'][-1]:,.0f} req/s, "
                    f"static {rates['static'][-1]:,.0f} req/s"
                )
        finally:
            await with_mw.close()
            await static.close()
        api_requests = (await srv.stats())["api_requests"]
    ratio = paired_ratio(rates["middleware"], rates["static"])
    cpu_ratio = paired_ratio(cpu["middleware"], cpu["static"])
    rows = [
        Row(
            TITLE,
            "requests per second",
            f"{median(rates['middleware']):,.0f} req/s",
            f"static header {median(rates['static']):,.0f} req/s",
            f"≥ {TARGET}× static",
            judge(ratio >= TARGET and not failures),
            ratio,
            f"client CPU per request {fmt_ns(median(cpu['middleware']))} vs "
            f"{fmt_ns(median(cpu['static']))} ({cpu_ratio:.2f}×); non-200 answers: "
            f"{len(failures)} of {api_requests:,}",
            {
                "middleware_rps": rates["middleware"],
                "static_rps": rates["static"],
                "middleware_cpu_ns": cpu["middleware"],
                "static_cpu_ns": cpu["static"],
                "failures": len(failures),
            },
            limit=TARGET,
            at_least=True,
        )
    ]
    notes = [
        f"{n:,} GETs per sample from {CONCURRENCY} concurrent tasks, each reading the JSON "
        f"body; {repeats} samples per session, alternating; ratio = median of per-round "
        "ratios. The API server (fake server's /api/me, validates the bearer token) runs in its "
        "own process: on 2 cores, client and server each get about one.",
    ]
    return ScenarioResult("middleware", TITLE, rows, notes)
