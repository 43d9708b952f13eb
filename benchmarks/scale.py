"""Scale: 100,000 registered credentials in one manager.

Measured in a fresh process (:mod:`benchmarks._scale_worker`): each credential is registered with
``tm.add(key, provider)``, gets a fresh token in the (default, in-memory) store, and is loaded
into the hot cache by one ``get_token`` (a store read, no token request). Tokens have exactly
the field lengths of the fake Keliweb server's (390-character JWT access token, 136-character
refresh token), each with its own strings.

* memory per credential: the Python heap growth under ``tracemalloc`` (a second, untimed pass),
  divided by the number of credentials; RSS growth of the first pass is shown too;
* get latency: ``await tm.get_token(key)`` over all keys in shuffled order, against the floor
  doing the same over a dict of the same size, and against one key; interleaved samples.
"""

from __future__ import annotations

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
from ._infra import run_workers

TITLE = "scale (registered credentials)"
MEMORY_TARGET = 2048
LATENCY_TARGET = 1.5


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(100_000, 1_000)
    config = {"n": n, "target_ns": ctx.pick(20e6, 2e6), "repeats": ctx.pick(15, 1)}
    (data,) = await run_workers("benchmarks._scale_worker", [config], timeout=600)
    samples = data["samples"]
    heap = data["heap_per_credential"]
    ratio_floor = paired_ratio(samples["many"], samples["floor_many"])
    ratio_one = paired_ratio(samples["many"], samples["one"])
    rows = [
        Row(
            TITLE,
            f"memory per credential ({n:,} credentials)",
            fmt_bytes(heap),
            "—",
            "≤ 2 KB each",
            judge(heap <= MEMORY_TARGET),
            None,
            f"Python heap (tracemalloc); of which {data['strings_per_credential']} B are the "
            f"access token, refresh token and key strings themselves; RSS growth "
            f"{fmt_bytes(data['rss_per_credential'])} per credential",
            {k: v for k, v in data.items() if k != "samples"},
        ),
        Row(
            TITLE,
            f"get_token over {n:,} cached credentials",
            fmt_ns(median(samples["many"])),
            f"floor over {n:,} keys {fmt_ns(median(samples['floor_many']))}; one key "
            f"{fmt_ns(median(samples['one']))}",
            f"hot path unchanged: ≤ {LATENCY_TARGET}× floor",
            judge(ratio_floor <= LATENCY_TARGET and data["cached"] == n),
            ratio_floor,
            f"vs asynctoken with a single key: {ratio_one:.2f}× (the difference is the CPU "
            f"cache: the floor over {n:,} keys pays it too, "
            f"{paired_ratio(samples['floor_many'], samples['floor_one']):.2f}×); "
            f"{data['cached']:,} of {n:,} in the hot cache",
            samples,
            limit=LATENCY_TARGET,
        ),
    ]
    notes = [
        f"TokenManager(cache_size={n:,}) with the default MemoryStore, so that every credential "
        "can be hot (the default cache_size is 10,000; beyond it a get costs a store read). "
        "Keys visited in a fixed shuffled order; floor = the hot-path floor coroutine over a "
        "dict holding the same tokens.",
    ]
    return ScenarioResult("scale", TITLE, rows, notes)
