"""Timing, statistics and the result model shared by every scenario.

Rules, because the reference machine is a shared, noisy 2-core box:

* time with :func:`time.perf_counter_ns`, many iterations per sample;
* take the median of several samples (``repeats``, at least 5 outside smoke mode);
* compare contenders only through ratios taken in the same process and run, with the contenders
  interleaved sample by sample (rotating who goes first), so that drift hits all of them alike;
* a ratio is the median of the per-sample ratios, not the ratio of two medians.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from time import perf_counter_ns
from typing import Any, Literal

__all__ = [
    "Batch",
    "Context",
    "Row",
    "ScenarioResult",
    "Status",
    "calibrate",
    "fmt_bytes",
    "fmt_ns",
    "fmt_ratio",
    "interleaved",
    "judge",
    "median",
    "now_ns",
    "paired_ratio",
    "percentile",
    "timed_batch",
]

Status = Literal["met", "MISSED", "info", "not installed", "ERROR"]

# A contender of an interleaved measurement: runs ``n`` operations, returns elapsed nanoseconds.
Batch = Callable[[int], Awaitable[int]]


@dataclass
class Context:
    """What every scenario gets: the mode, shared services, and a progress log.

    Attributes:
        smoke: tiny sizes, one run each; figures are not meaningful, only that it all works.
        redis_url: a Redis server for the Redis scenarios (started by the CLI if not given).
        owns_redis: whether the CLI started that server (then scenarios may FLUSHDB it).
        log: progress messages (to stderr).
    """

    smoke: bool
    redis_url: Callable[[], str]
    owns_redis: Callable[[], bool]
    log: Callable[[str], None]

    def pick(self, full: Any, smoke: Any) -> Any:
        """``smoke`` in smoke mode, else ``full``."""
        return smoke if self.smoke else full

    @property
    def repeats(self) -> int:
        """Samples per contender: 1 in smoke mode, else at least 5."""
        return 1 if self.smoke else 7


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        scenario: the scenario's title (repeated on each of its rows in the JSON).
        metric: what is measured.
        asynctoken: asynctoken's figure, formatted.
        compared: the comparison figure(s), formatted.
        ratio: the ratio that the target is about, if any.
        target: the target, in words.
        status: met / MISSED / info / not installed / ERROR.
        detail: why it missed, or what the number means.
        values: the raw numbers behind the row (JSON).
        limit: the ratio the target names (for the chart), if any.
        at_least: the target is ``ratio >= limit`` rather than ``ratio <= limit``.
    """

    scenario: str
    metric: str
    asynctoken: str
    compared: str
    target: str
    status: Status
    ratio: float | None = None
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    limit: float | None = None
    at_least: bool = False

    @property
    def result(self) -> str:
        """The status as shown in the table; a miss carries its number."""
        if self.status == "MISSED" and self.ratio is not None and self.limit is not None:
            return f"MISSED ({self.ratio:.2f}×)"
        return self.status

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ratio is not None and not math.isfinite(self.ratio):
            data["ratio"] = None
        return data


@dataclass
class ScenarioResult:
    """Everything a scenario reports."""

    name: str
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of the per-sample ratios ``numerators[i] / denominators[i]``."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]
    return median(ratios)


# ---------------------------------------------------------------------------------- timing


async def timed_batch(batch: Batch, n: int) -> float:
    """Nanoseconds per operation of one batch, with the garbage collector paused (as timeit)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        elapsed = await batch(n)
    finally:
        if enabled:
            gc.enable()
    return elapsed / n


async def calibrate(batch: Batch, target_ns: float, *, start: int = 100, cap: int = 10**7) -> int:
    """Iterations for one batch of ``batch`` to take about ``target_ns``."""
    n = start
    while True:
        elapsed = await batch(n)
        if elapsed >= target_ns / 4 or n >= cap:
            return max(start, min(cap, int(n * target_ns / max(elapsed, 1))))
        n *= 4


async def interleaved(
    contenders: Mapping[str, Batch], target_ns: float, repeats: int
) -> dict[str, list[float]]:
    """Run every contender ``repeats`` times, interleaved; ns/op of each sample per contender.

    Each contender's batch size is calibrated to take about ``target_ns`` (which also warms up
    imports, caches and the allocator). The order rotates each round, so no contender always
    runs first, or always right after the same other one.
    """
    names = list(contenders)
    sizes = {name: await calibrate(contenders[name], target_ns) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await timed_batch(contenders[name], sizes[name]))
    return samples


def now_ns() -> int:
    """:func:`time.perf_counter_ns`, re-exported so scenarios use one clock."""
    return perf_counter_ns()


# ---------------------------------------------------------------------------------- formatting


def fmt_ns(ns: float) -> str:
    """``123 ns``, ``4.56 µs``, ``7.89 ms`` or ``1.23 s``."""
    if math.isnan(ns):
        return "n/a"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def fmt_ratio(ratio: float | None) -> str:
    """``1.23×``."""
    if ratio is None or math.isnan(ratio):
        return "n/a"
    return f"{ratio:.2f}×"


def fmt_bytes(size: float) -> str:
    """``512 B``, ``1.50 KB``, ``12.3 MB``."""
    if size < 1024:
        return f"{size:.0f} B"
    if size < 1024**2:
        return f"{size / 1024:.2f} KB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MB"
    return f"{size / 1024**3:.2f} GB"


def judge(ok: bool) -> Status:
    """``met`` or ``MISSED``."""
    return "met" if ok else "MISSED"
