"""Refresh latency with an ``on_event`` subscriber that is slow, or that fails.

Each operation is one forced refresh (``await tm.refresh(key)``: store lock, one token request
to the in-process fake Keliweb server on loopback, rotation saved, three events). Compared,
interleaved in one process, with the same refresh on a manager without a subscriber:

* slow: an async subscriber that awaits 10 ms per event (its queue grows while it lags);
* failing: a plain function that raises on every event (each failure is logged).

The subscriber runs in a task of its own after the step that emitted the event, so neither
may slow the refresh down: target ≤ 1.1× the refresh without a subscriber.
"""

from __future__ import annotations

import asyncio
import logging

from asynctoken import KeliwebProvider, TokenManager
from asynctoken.events import Event
from asynctoken.testing import FakeOAuthServer

from ._harness import (
    Batch,
    Context,
    Row,
    ScenarioResult,
    fmt_ns,
    interleaved,
    judge,
    median,
    now_ns,
    paired_ratio,
)

TITLE = "refresh with an event subscriber"
TARGET = 1.1


async def slow(event: Event) -> None:
    """A subscriber that takes 10 ms per event."""
    await asyncio.sleep(0.01)


def failing(event: Event) -> None:
    """A subscriber that fails on every event."""
    raise RuntimeError("subscriber failure")


def refresh_batch(tm: TokenManager, key: str) -> Batch:
    async def batch(n: int) -> int:
        start = now_ns()
        for _ in range(n):
            await tm.refresh(key)
        return now_ns() - start

    return batch


async def run(ctx: Context) -> ScenarioResult:
    target_ns = ctx.pick(100e6, 5e6)
    key = "bench"
    # The failing subscriber's tracebacks are logged by design; keep them off the console.
    quiet = logging.getLogger("asynctoken")
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        async with (
            FakeOAuthServer("keliweb", expires_in=3600) as server,
            TokenManager(telemetry=False, close_timeout=1.0) as none,
            TokenManager(telemetry=False, close_timeout=1.0, on_event=slow) as lagging,
            TokenManager(telemetry=False, close_timeout=1.0, on_event=failing) as broken,
        ):
            provider = KeliwebProvider(
                client_id=server.client_id,
                client_secret=server.client_secret,
                token_url=server.token_url,
            )
            managers = {"none": none, "slow": lagging, "failing": broken}
            for tm in managers.values():
                await tm.add(key, provider, refresh_token=server.issue_refresh_token())
            contenders = {name: refresh_batch(tm, key) for name, tm in managers.items()}
            samples = await interleaved(contenders, target_ns, ctx.repeats)
            requests = server.token_requests
    finally:
        quiet.level = level
    rows = [
        subscriber_row("slow subscriber (10 ms per event)", samples["slow"], samples["none"]),
        subscriber_row("failing subscriber", samples["failing"], samples["none"]),
    ]
    notes = [
        f"{requests:,} token requests in all; each refresh emits RefreshStarted, "
        "RefreshTokenRotated and RefreshSucceeded.",
        f"Batch size calibrated per contender to ~{target_ns / 1e6:.0f} ms; {ctx.repeats} "
        "interleaved samples each; ratio = median of per-round ratios.",
    ]
    return ScenarioResult("events", TITLE, rows, notes)


def subscriber_row(metric: str, ours: list[float], alone: list[float]) -> Row:
    ratio = paired_ratio(ours, alone)
    return Row(
        TITLE,
        f"forced refresh, {metric}",
        fmt_ns(median(ours)),
        f"no subscriber {fmt_ns(median(alone))}",
        f"≤ {TARGET}× no subscriber",
        judge(ratio <= TARGET),
        ratio,
        "one refresh = lock, token request to the loopback fake server, rotation saved",
        {"with_ns": ours, "without_ns": alone},
        limit=TARGET,
    )
