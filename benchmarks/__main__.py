"""``python -m benchmarks``: run every scenario, print one table, write the results.

Options::

    --smoke           every scenario once, tiny sizes (seconds); for the test suite
    --only a,b        only these scenarios (names: see --list)
    --out DIR         where to write results.md / results.json (default benchmarks/results,
                      benchmarks/results/smoke with --smoke)
    --redis-url URL   use this Redis (default: start a throw-away redis-server)
    --chart           also write results.png (needs matplotlib: pip install -e '.[chart]')
    --list            list the scenarios and exit

Exit status: 0 when every scenario ran (missed targets included: they are results), 1 when a
scenario crashed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from ._harness import Context, Row, ScenarioResult
from ._infra import RedisHandle
from ._report import machine, print_table, write_chart, write_json, write_markdown

SCENARIOS = (
    "hot_path",
    "cold_stampede",
    "stale_window",
    "shared_credential",
    "middleware",
    "dpop",
    "scale",
    "multi_tenant",
    "events",
    "stores",
)
RESULTS = Path(__file__).resolve().parent / "results"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="asynctoken's benchmark suite."
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--redis-url", default=None, help="an existing Redis to use")
    parser.add_argument("--chart", action="store_true", help="also write results.png")
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    return parser


def run_scenario(name: str, ctx: Context) -> ScenarioResult:
    """Run one scenario in its own event loop; a crash becomes an ERROR row."""
    module = importlib.import_module(f"benchmarks.{name}")
    _log(f"[{name}] {module.TITLE}")
    gc.collect()
    started = time.perf_counter()
    try:
        result: ScenarioResult = asyncio.run(module.run(ctx))
    except Exception as exc:
        traceback.print_exc()
        row = Row(module.TITLE, "scenario", "", "", "—", "ERROR", detail=f"{exc!r}")
        result = ScenarioResult(name, module.TITLE, [row])
    result.seconds = time.perf_counter() - started
    _log(f"[{name}] done in {result.seconds:.1f} s")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in SCENARIOS:
            print(name, "-", importlib.import_module(f"benchmarks.{name}").TITLE)
        return 0
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = sorted(set(selected) - set(SCENARIOS))
    if unknown:
        _log(f"unknown scenario(s): {', '.join(unknown)}; see --list")
        return 2
    mode = "smoke" if args.smoke else "full"
    out: Path = args.out or (RESULTS / "smoke" if args.smoke else RESULTS)
    redis = RedisHandle(args.redis_url)
    ctx = Context(smoke=args.smoke, redis_url=redis.url, owns_redis=redis.owned, log=_log)
    started = time.perf_counter()
    results: list[ScenarioResult] = []
    try:
        for name in selected:
            results.append(run_scenario(name, ctx))
        info = machine(redis.url() if redis.owned() or args.redis_url else None)
    finally:
        redis.stop()
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    print_table(results, info, mode)
    write_markdown(out / "results.md", results, info, mode, seconds)
    write_json(out / "results.json", results, info, mode, seconds)
    _log(f"results written to {out / 'results.md'} and {out / 'results.json'} ({seconds:.0f} s)")
    if args.chart:
        if write_chart(out / "results.png", results):
            _log(f"chart written to {out / 'results.png'}")
        else:
            _log("no chart: matplotlib is not installed (pip install -e '.[chart]')")
    return 1 if any(row.status == "ERROR" for r in results for row in r.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
