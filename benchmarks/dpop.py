"""DPoP cost in the middleware: requests per second through ``tm.middleware(key)`` with a
DPoP-bound token (a new ES256 proof signed per request) vs the same middleware with a bearer
token.

The API is a minimal aiohttp app in its own process that answers 200 to anything (so that the
figure is the client's cost, not a verifier's). Two managers hold one credential each, served by
a provider that issues a long-lived token without HTTP (one DPoP-bound, one bearer): the hot
path is the same dict lookup, the difference is the proof. Samples alternate, as in the
middleware scenario; client CPU per request is reported too.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp

from asynctoken import DPoPKey, Token, TokenManager

from ._harness import Context, Row, ScenarioResult, fmt_ns, judge, median, paired_ratio
from .middleware import CONCURRENCY, aiohttp_get, make_batch

TITLE = "middleware throughput with DPoP (loopback API)"
TARGET = 0.5  # a signature per request: at least half the bearer throughput

_SERVER = """
import sys
from aiohttp import web

async def ok(request):
    return web.Response(text="ok")

app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)

async def main():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()

import asyncio
asyncio.run(main())
"""


class StaticProvider:
    """A provider that issues one long-lived token without HTTP (benchmark only)."""

    name = "static"
    token_url = "http://127.0.0.1/unused"

    def __init__(self, dpop: bool) -> None:
        self._dpop = DPoPKey.generate("ES256") if dpop else None

    @property
    def can_reauthenticate(self) -> bool:
        return True

    async def fetch_token(
        self, session: aiohttp.ClientSession, *, refresh_token: str | None, issued_at: float
    ) -> Token:
        return Token(
            access_token="benchmark-access-token-0123456789abcdef",
            expires_at=issued_at + 86_400,
            issued_at=issued_at,
            token_type="DPoP" if self._dpop else "Bearer",
            dpop_key=None if self._dpop is None else self._dpop.jwk,
        )


async def run(ctx: Context) -> ScenarioResult:
    n = ctx.pick(1_000, 100)
    repeats = ctx.pick(21, 1)
    failures: list[int] = []
    rates: dict[str, list[float]] = {"dpop": [], "bearer": []}
    cpu: dict[str, list[float]] = {"dpop": [], "bearer": []}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    assert server.stdin is not None
    port = int((await asyncio.wait_for(server.stdout.readline(), 30)).decode())
    url = f"http://127.0.0.1:{port}/api/items?page=1"
    sign_ns: list[float] = []
    try:
        async with TokenManager() as dpop_tm, TokenManager() as bearer_tm:
            await dpop_tm.add("api", StaticProvider(dpop=True))
            await bearer_tm.add("api", StaticProvider(dpop=False))
            key = DPoPKey.from_jwk((await dpop_tm.get_token("api")).dpop_key or "")
            for _ in range(ctx.pick(2_000, 20)):
                start = time.perf_counter_ns()
                key.proof("GET", url, access_token="benchmark-access-token")
                sign_ns.append(time.perf_counter_ns() - start)
            sessions = {
                name: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                    middlewares=(tm.middleware("api"),),
                )
                for name, tm in (("dpop", dpop_tm), ("bearer", bearer_tm))
            }
            try:
                batches = {
                    name: make_batch(aiohttp_get(s), url, failures) for name, s in sessions.items()
                }
                for batch in batches.values():
                    await batch(min(n, 300))
                names = list(batches)
                for round_ in range(repeats):
                    for name in names if round_ % 2 == 0 else names[::-1]:
                        wall, seconds = await batches[name](n)
                        rates[name].append(n / (wall / 1e9))
                        cpu[name].append(seconds * 1e9 / n)
                    ctx.log(
                        f"  dpop {rates['dpop'][-1]:,.0f} req/s, "
                        f"bearer {rates['bearer'][-1]:,.0f} req/s"
                    )
            finally:
                for session in sessions.values():
                    await session.close()
    finally:
        server.stdin.close()
        await asyncio.wait_for(server.wait(), 30)
    ratio = paired_ratio(rates["dpop"], rates["bearer"])
    cpu_ratio = paired_ratio(cpu["dpop"], cpu["bearer"])
    rows = [
        Row(
            TITLE,
            "requests per second",
            f"{median(rates['dpop']):,.0f} req/s",
            f"bearer {median(rates['bearer']):,.0f} req/s",
            f"≥ {TARGET}× bearer",
            judge(ratio >= TARGET and not failures),
            ratio,
            f"client CPU per request {fmt_ns(median(cpu['dpop']))} vs "
            f"{fmt_ns(median(cpu['bearer']))} ({cpu_ratio:.2f}×); one ES256 proof "
            f"{fmt_ns(median(sign_ns))}; non-200 answers: {len(failures)}",
            {
                "dpop_rps": rates["dpop"],
                "bearer_rps": rates["bearer"],
                "dpop_cpu_ns": cpu["dpop"],
                "bearer_cpu_ns": cpu["bearer"],
                "proof_ns": median(sign_ns),
                "failures": len(failures),
            },
            limit=TARGET,
            at_least=True,
        )
    ]
    notes = [
        f"{n:,} GETs per sample from {CONCURRENCY} concurrent tasks through the middleware; "
        f"{repeats} samples per token kind, alternating; ratio = median of per-round ratios. "
        "The API (answers 200 to anything) runs in its own process.",
    ]
    return ScenarioResult("dpop", TITLE, rows, notes)
