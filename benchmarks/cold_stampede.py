"""Cold stampede: 10,000 concurrent callers of a credential that has no access token yet.

The token endpoint (the fake server, in its own process) answers after 50 ms. Measured: how many
token requests reach it and the wall time until every caller has its token.

* floor: 10,000 tasks awaiting one future; the first task to run creates it and schedules its
  result 50 ms later (``loop.call_later``). That is an ideal single flight with no HTTP at all.
* Authlib: 10,000 tasks calling ``ensure_active_token`` on one ``AsyncOAuth2Client`` whose token
  is expired (it refreshes under an ``anyio.Lock``).

Each run uses a new manager (cold: no cached token, no HTTP connection) seeded with a new refresh
token; every caller is a task created by ``asyncio.gather``, for all contenders alike.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

from asynctoken import KeliwebProvider, TokenManager

from . import _peers
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

TITLE = "cold stampede (50 ms token endpoint)"
LATENCY = 0.05
WALL_TARGET = 1.2


async def stampede(
    make_call: Callable[[], Coroutine[Any, Any, Any]], n: int
) -> tuple[int, list[Any]]:
    """Wall nanoseconds for ``n`` concurrent calls (tasks via gather), and their results."""
    gc.collect()
    start = now_ns()
    results = await asyncio.gather(*(make_call() for _ in range(n)))
    return now_ns() - start, results


async def run_asynctoken(srv: FakeServerProcess, n: int) -> tuple[int, int, int]:
    """(wall ns, token requests, distinct tokens) of one cold stampede on a new manager."""
    seed = await srv.refresh_token()
    provider = KeliwebProvider(
        client_id=srv.client_id, client_secret=srv.client_secret, token_url=srv.token_url
    )
    before = (await srv.stats())["token_requests"]
    async with TokenManager() as tm:
        await tm.add("tenant", provider, refresh_token=seed)
        wall, tokens = await stampede(lambda: tm.get_token("tenant"), n)
    requests = (await srv.stats())["token_requests"] - before
    return wall, requests, len({token.access_token for token in tokens})


async def run_floor(n: int) -> int:
    """Wall ns of the floor: ``n`` tasks awaiting one future resolved 50 ms after the first."""
    loop = asyncio.get_running_loop()
    shared: list[asyncio.Future[str]] = []

    async def call() -> str:
        if not shared:
            future: asyncio.Future[str] = loop.create_future()
            loop.call_later(LATENCY, future.set_result, "token")
            shared.append(future)
        return await shared[0]

    wall, _ = await stampede(call, n)
    return wall


async def run_authlib(client_class: Any, srv: FakeServerProcess, n: int) -> tuple[int, int, int]:
    """(wall ns, token requests, distinct tokens) of one stampede on an expired Authlib client."""
    token = await srv.token()
    client = client_class(
        client_id=srv.client_id,
        client_secret=srv.client_secret,
        token={
            "access_token": token.access_token,
            "token_type": "Bearer",
            "refresh_token": token.refresh_token,
            "expires_at": int(time.time()) - 10,
        },
        token_endpoint=srv.token_url,
        token_endpoint_auth_method="client_secret_post",
    )
    before = (await srv.stats())["token_requests"]
    try:
        wall, _ = await stampede(lambda: client.ensure_active_token(client.token), n)
        access = client.token["access_token"]
    finally:
        await client.aclose()
    requests = (await srv.stats())["token_requests"] - before
    return wall, requests, 1 if access != token.access_token else 0


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(10_000, 200)
    repeats = ctx.pick(7, 1)
    client_class = _peers.authlib_async_client()
    walls: dict[str, list[float]] = {"asynctoken": [], "floor": [], "authlib": []}
    requests: dict[str, list[int]] = {"asynctoken": [], "authlib": []}
    distinct: list[int] = []
    async with FakeServerProcess(delay=LATENCY) as srv:
        # Warm-up (imports, first connection of the control client), not recorded.
        await run_asynctoken(srv, 10)
        await run_floor(10)
        for round_ in range(repeats):
            order = ["asynctoken", "floor", "authlib"]
            shift = round_ % 3
            for name in order[shift:] + order[:shift]:
                if name == "asynctoken":
                    wall, count, different = await run_asynctoken(srv, n)
                    requests["asynctoken"].append(count)
                    distinct.append(different)
                elif name == "floor":
                    wall = await run_floor(n)
                elif client_class is not None:
                    wall, count, _ = await run_authlib(client_class, srv, n)
                    requests["authlib"].append(count)
                else:
                    continue
                walls[name].append(wall)
                ctx.log(f"  {name}: {fmt_ns(wall)}")
    ours_requests = max(requests["asynctoken"])
    ratio = paired_ratio(walls["asynctoken"], walls["floor"])
    rows = [
        Row(
            TITLE,
            f"token requests, {n:,} concurrent callers",
            str(ours_requests),
            f"Authlib {max(requests['authlib'])}"
            if requests["authlib"]
            else "Authlib not installed",
            "1 request",
            judge(ours_requests == 1 and set(distinct) == {1}),
            None,
            f"max over {repeats} runs; every caller got the same token: {set(distinct) == {1}}",
            {"asynctoken": requests["asynctoken"], "authlib": requests["authlib"]},
        ),
        Row(
            TITLE,
            f"wall time until all {n:,} callers have a token",
            fmt_ns(median(walls["asynctoken"])),
            f"floor {fmt_ns(median(walls['floor']))}",
            f"≤ {WALL_TARGET}× floor",
            judge(ratio <= WALL_TARGET),
            ratio,
            f"floor = {n:,} tasks awaiting one future resolved {LATENCY * 1000:.0f} ms after the "
            "first task ran",
            {"asynctoken_ns": walls["asynctoken"], "floor_ns": walls["floor"]},
            limit=WALL_TARGET,
        ),
    ]
    if client_class is None:
        rows.append(Row(TITLE, "vs Authlib wall time", "", "not installed", "—", "not installed"))
    else:
        peer_ratio = paired_ratio(walls["asynctoken"], walls["authlib"])
        rows.append(
            Row(
                TITLE,
                "vs Authlib wall time",
                fmt_ns(median(walls["asynctoken"])),
                f"Authlib {fmt_ns(median(walls['authlib']))}",
                "—",
                "info",
                peer_ratio,
                f"Authlib made {max(requests['authlib'])} request(s); its callers pass one "
                "anyio.Lock in turn",
                {"authlib_ns": walls["authlib"]},
            )
        )
    notes = [
        f"{n:,} callers = tasks made by asyncio.gather; a new TokenManager (MemoryStore, own "
        "aiohttp session: the TCP connect is part of the cold start) and a new refresh token per "
        f"run; the fake Keliweb server runs in its own process with {LATENCY * 1000:.0f} ms "
        f"latency; {repeats} interleaved runs per contender, medians.",
        "Authlib: AsyncOAuth2Client with an expired token (expires_at 10 s in the past), "
        "refresh_token and token_endpoint set, client_secret_post; every caller awaits "
        "`client.ensure_active_token(client.token)`.",
    ]
    return ScenarioResult("cold_stampede", TITLE, rows, notes)
