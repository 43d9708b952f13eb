"""``asynctoken demo``: thousands of coroutines, one in-process fake server, one refresh per expiry.

Needs no network and no configuration. Access tokens live a second or two and every refresh
rotates the refresh token; the verdict (:func:`_summarize`) checks that each expiry caused
exactly one token request and that no call failed, else the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from .._errors import TokenError
from .._manager import TokenManager
from ..providers import KeliwebProvider
from ._exit import EXIT_OK, EXIT_TOKEN
from ._output import Output, Style, _count, _duration, is_terminal

if TYPE_CHECKING:
    from ..testing import TokenRequest

__all__ = ["cmd_demo"]


@dataclass
class _DemoStats:
    """What the demo's workers measured."""

    calls: int = 0
    failures: int = 0
    expired_served: int = 0
    max_latency: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)  # see _bucket
    served: dict[str, float] = field(default_factory=dict)  # access token -> first seen
    errors: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of get_token latency, in seconds (within 1/16)."""
        total = sum(self.buckets.values())
        rank = math.ceil(q * total)
        seen = 0
        for nanos in sorted(self.buckets):
            seen += self.buckets[nanos]
            if seen >= rank:
                return nanos / 1e9
        return 0.0


def _bucket(nanos: int) -> int:
    """Round down to 4 significant bits: a histogram of 1/16 relative precision, few keys."""
    shift = max(nanos.bit_length() - 4, 0)
    return (nanos >> shift) << shift


async def cmd_demo(args: argparse.Namespace, style: Style, out: Output) -> int:
    """Thousands of coroutines, a short-lived rotating credential, one request per expiry."""
    from ..testing import FakeOAuthServer

    workers: int = args.workers
    seconds: float = args.seconds
    lifetime: float = args.lifetime
    out.write(
        style.bold("asynctoken demo") + f": {_count(workers)} coroutines call get_token() for "
        f"{seconds:g} s against an in-process fake Keliweb server.\n"
        f"Access tokens live {lifetime:g} s; every refresh rotates the refresh token and reusing "
        "an old one would revoke everything.\n\n"
    )
    out.flush()
    stats = _DemoStats()
    running = True
    key = "demo"

    async with FakeOAuthServer(
        "keliweb", expires_in=lifetime, rotate=True, revoke_family_on_reuse=True
    ) as server:
        provider = KeliwebProvider(
            server.client_id, server.client_secret, token_url=server.token_url
        )
        async with TokenManager() as manager:
            await manager.add(key, provider, refresh_token=server.issue_refresh_token())

            async def worker() -> None:
                get_token = manager.get_token
                clock = time.perf_counter
                wall = time.time
                buckets = stats.buckets
                served = stats.served
                while running:
                    started = clock()
                    try:
                        token = await get_token(key)
                    except TokenError as exc:
                        stats.failures += 1
                        name = type(exc).__name__
                        stats.errors[name] = stats.errors.get(name, 0) + 1
                        await asyncio.sleep(0.01)
                        continue
                    elapsed = clock() - started
                    stats.calls += 1
                    if token.expires_at <= wall():
                        stats.expired_served += 1
                    if token.access_token not in served:
                        served[token.access_token] = wall()
                    nanos = _bucket(int(elapsed * 1e9))
                    buckets[nanos] = buckets.get(nanos, 0) + 1
                    if elapsed > stats.max_latency:
                        stats.max_latency = elapsed
                    await asyncio.sleep(0)

            progress = _Progress(sys.stderr)
            began = time.monotonic()
            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            try:
                while (elapsed := time.monotonic() - began) < seconds:
                    progress.update(elapsed, seconds, stats, server.token_requests)
                    await asyncio.sleep(min(progress.interval, max(seconds - elapsed, 0.0)))
            finally:
                running = False
                await asyncio.gather(*tasks, return_exceptions=True)
                progress.done()
            duration = time.monotonic() - began
        # the manager is closed: any refresh still in flight has finished and been counted
        summary = _summarize(stats, server.requests, server.reuse_detected, lifetime)

    return _print_summary(summary, stats, duration, workers, style, out)


class _Progress:
    """A live status line on a terminal (stderr), plain periodic lines otherwise.

    The live line needs cursor control: not on a ``TERM=dumb`` terminal, which gets the plain
    lines. With stderr closed, nothing.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._tty = is_terminal(stream)
        self.interval = 0.2 if self._tty else 1.0
        self._last_calls = 0
        self._last_time = time.monotonic()

    def update(self, elapsed: float, total: float, stats: _DemoStats, requests: int) -> None:
        now = time.monotonic()
        rate = (stats.calls - self._last_calls) / max(now - self._last_time, 1e-9)
        self._last_calls, self._last_time = stats.calls, now
        if self._stream is None:
            return
        line = (
            f"{elapsed:5.1f}/{total:g} s  calls {_count(stats.calls):>11}  "
            f"({rate / 1e3:,.0f} k/s)  token requests {requests}  failed {stats.failures}"
        )
        if self._tty:
            self._stream.write("\r\033[2K" + line)
        elif stats.calls:
            self._stream.write(line + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty and self._stream is not None:
            self._stream.write("\r\033[2K")
            self._stream.flush()


@dataclass(frozen=True, slots=True)
class _Summary:
    token_requests: int
    unused_last: bool
    expiries: int
    rotations: int
    reuse_detected: int
    ok: bool
    problems: list[str]


def _summarize(
    stats: _DemoStats, requests: Sequence[TokenRequest], reuse_detected: int, lifetime: float
) -> _Summary:
    """Check the invariant: one token request per expiry, no failure, no reuse."""
    problems: list[str] = []
    failed = [r for r in requests if r.outcome != "ok"]
    rotations = sum(
        1
        for r in requests
        if r.outcome == "ok"
        and r.issued_refresh_token
        and r.issued_refresh_token != r.refresh_token
    )
    # Tokens the workers saw change: each change is one expiry that needed a new token.
    expiries = max(len(stats.served) - 1, 0)
    issued = [r.issued_access_token for r in requests if r.outcome == "ok"]
    # A refresh that was still in flight when the workers stopped is the only allowed unused one.
    unused = [t for t in issued if t not in stats.served]
    unused_last = bool(unused) and unused == issued[-1:]
    gaps = [b.loop_time - a.loop_time for a, b in itertools.pairwise(requests)]
    min_gap = min(gaps) if gaps else None
    if stats.failures:
        problems.append(f"{stats.failures} get_token call(s) failed")
    if stats.expired_served:
        problems.append(f"{stats.expired_served} call(s) got an already expired token")
    if failed:
        problems.append(f"{len(failed)} token request(s) failed at the server")
    if reuse_detected:
        problems.append(f"the server detected {reuse_detected} refresh-token reuse(s)")
    if unused and not unused_last:
        problems.append(f"{len(unused)} token(s) were requested but never used")
    if len(requests) - (1 if unused_last else 0) != expiries + 1:
        problems.append("token requests do not match one initial request plus one per expiry")
    if min_gap is not None and min_gap < lifetime / 2:
        problems.append(f"two token requests only {_duration(min_gap)} apart (one expiry)")
    return _Summary(
        token_requests=len(requests),
        unused_last=unused_last,
        expiries=expiries,
        rotations=rotations,
        reuse_detected=reuse_detected,
        ok=not problems,
        problems=problems,
    )


def _print_summary(
    summary: _Summary,
    stats: _DemoStats,
    duration: float,
    workers: int,
    style: Style,
    out: Output,
) -> int:
    def mark(good: bool) -> str:
        return style.green("✓") if good else style.red("✗")

    renewals = summary.token_requests - 1
    per_expiry = (
        f"{(renewals - summary.unused_last) / summary.expiries:.2f} per expiry"
        if summary.expiries
        else "no expiry yet"
    )
    extra = " (+1 finished after the last call)" if summary.unused_last else ""
    calls_ok = stats.failures == 0 and not stats.expired_served
    rate = f"{stats.calls / duration / 1e6:.2f} M/s from {_count(workers)} coroutines"
    latency = f"p99 {_duration(stats.percentile(0.99))} · max {_duration(stats.max_latency)}"
    rows = [
        ("calls served", _count(stats.calls), style.dim(f"{rate} in {duration:.1f} s")),
        ("failed calls", _count(stats.failures), mark(calls_ok)),
        (
            "token requests",
            _count(summary.token_requests),
            style.dim(f"1 initial + {renewals} refreshes{extra}"),
        ),
        ("expiries seen", _count(summary.expiries), f"{per_expiry} {mark(summary.ok)}"),
        ("get_token latency", f"p50 {_duration(stats.percentile(0.5))}", style.dim(latency)),
        (
            "refresh-token rotations",
            _count(summary.rotations),
            style.dim("each new refresh token saved before use"),
        ),
        (
            "reuse detected by server",
            _count(summary.reuse_detected),
            mark(summary.reuse_detected == 0),
        ),
    ]
    for label, value, note in rows:
        out.write(f"  {label:<25} {value:>12}   {note}\n")
    out.write("\n")
    if summary.ok:
        out.write(
            style.green("OK") + ": every expiry caused exactly one token request, and no "
            "call failed.\n"
        )
        return EXIT_OK
    out.write(style.red("FAILED") + ": " + "; ".join(summary.problems) + "\n")
    if stats.errors:
        out.write(f"  errors: {stats.errors}\n")
    return EXIT_TOKEN
