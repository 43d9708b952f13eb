"""Several processes (FileStore) or hosts (RedisStore) sharing one rotating credential.

The parent runs a fake Keliweb server (rotating refresh tokens, whole family revoked when a
rotated refresh token comes back, 50 ms latency) whose access tokens live 2 s. Worker processes
(:mod:`benchmarks._shared_worker`) start together and run concurrent callers for several token
lifetimes: each call gets a token and calls the protected API with it.

* asynctoken with a ``FileStore`` (processes of one host share a JSON file);
* asynctoken with a ``RedisStore`` (processes that share nothing but Redis: separate hosts);
* Authlib: each worker an ``AsyncOAuth2Client`` loaded from a shared JSON token file, with an
  ``update_token`` callback that writes the new token to that file.

Token requests are grouped into refresh cycles (a gap of more than half the token's fresh period,
as the workers' default ``Margins`` give it, starts a new cycle: a 2 s token is fresh for 0.6 s and
refreshed about once a second); target: one request per cycle, and no failed call.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

from asynctoken import Margins
from asynctoken.testing import FakeOAuthServer

from . import _peers
from ._harness import Context, Row, ScenarioResult, judge
from ._infra import delete_prefix, run_workers

TITLE = "shared rotating credential"
LATENCY = 0.05
STARTUP = 3.0


def cycles(times: list[float], lifetime: float) -> list[int]:
    """Requests per refresh cycle; a gap over half the fresh period since a cycle began ends it.

    The workers use the default :class:`~asynctoken.Margins`: a token is refreshed once it turns
    stale, ``lifetime - stale`` after it was issued (not once a lifetime: short tokens are
    refreshed well before they expire).
    """
    stale, _ = Margins().offsets(lifetime)
    gap = (lifetime - stale) / 2
    counts: list[int] = []
    start: float | None = None
    for moment in sorted(times):
        if start is None or moment - start > gap:
            counts.append(0)
            start = moment
        counts[-1] += 1
    return counts


async def run_variant(
    server: FakeOAuthServer, mode: str, workers: int, base: dict[str, Any], tmp: str
) -> dict[str, Any]:
    """Run one variant; returns counts from the server and the workers."""
    config = dict(base, mode=mode, key="shared")
    if mode == "file":
        config["path"] = os.path.join(tmp, f"tokens-{uuid.uuid4().hex[:8]}.json")
        config["seed"] = server.issue_refresh_token()
    elif mode == "redis":
        config["prefix"] = f"bench-shared:{uuid.uuid4().hex[:8]}:"
        config["seed"] = server.issue_refresh_token()
    else:
        # The first token outlives the workers' start-up (about a second), so that they begin
        # with a valid token and meet their first expiry while running.
        lifetime, server.expires_in = server.expires_in, server.expires_in + STARTUP
        try:
            token = server.issue_token()
        finally:
            server.expires_in = lifetime
        config["path"] = os.path.join(tmp, f"authlib-{uuid.uuid4().hex[:8]}.json")
        with open(config["path"], "w") as handle:
            json.dump(
                {
                    "access_token": token.access_token,
                    "token_type": "Bearer",
                    "refresh_token": token.refresh_token,
                    "expires_at": int(token.expires_at),
                },
                handle,
            )
    first = server.token_requests
    reuse = server.reuse_detected
    try:
        results = await run_workers(
            "benchmarks._shared_worker",
            [config] * workers,
            timeout=float(base["duration"]) + 60,
        )
    finally:
        if mode == "redis":
            delete_prefix(config["redis_url"], config["prefix"])
    records = server.requests[first:]
    per_cycle = cycles([r.time for r in records], float(base["lifetime"]))
    outcomes: dict[str, int] = {}
    for record in records:
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    kinds: dict[str, int] = {}
    for result in results:
        for kind, count in result["kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    first_failures = [r["first_failure_s"] for r in results if r["first_failure_s"] is not None]
    return {
        "workers": workers,
        "requests": len(records),
        "per_cycle": per_cycle,
        "outcomes": outcomes,
        "reuse_detected": server.reuse_detected - reuse,
        "calls": sum(r["calls"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "failure_kinds": kinds,
        "first_failure_s": min(first_failures) if first_failures else None,
    }


def describe(data: dict[str, Any]) -> str:
    per_cycle = data["per_cycle"]
    mean = data["requests"] / len(per_cycle) if per_cycle else 0.0
    return (
        f"{mean:.2f}/expiry (max {max(per_cycle, default=0)}, {len(per_cycle)} expiries), "
        f"{data['failed']:,} of {data['calls']:,} calls failed"
    )


async def run(ctx: Context) -> ScenarioResult:
    lifetime = ctx.pick(2.0, 1.0)
    duration = ctx.pick(9.0, 2.0)
    workers = ctx.pick(4, 2)
    base = {
        "lifetime": lifetime,
        "duration": duration,
        "callers": ctx.pick(8, 2),
        "pause": 0.02,
        "leeway": ctx.pick(1, 0),
        "redis_url": ctx.redis_url(),
    }
    variants = [
        ("file", f"FileStore, {workers} processes"),
        ("redis", f"RedisStore, {workers} hosts"),
    ]
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="asynctoken-bench-") as tmp:
        async with FakeOAuthServer("keliweb", expires_in=lifetime, delay=LATENCY) as server:
            base |= {
                "token_url": server.token_url,
                "api_url": server.api_url,
                "client_id": server.client_id,
                "client_secret": server.client_secret,
            }
            for mode, label in variants:
                data = await run_variant(server, mode, workers, base, tmp)
                raw[mode] = data
                ctx.log(f"  {label}: {describe(data)}, outcomes {data['outcomes']}")
                ok = (
                    max(data["per_cycle"], default=0) == 1
                    and data["failed"] == 0
                    and data["reuse_detected"] == 0
                )
                rows.append(
                    Row(
                        TITLE,
                        f"{label}: requests per expiry, failed calls",
                        describe(data),
                        "see Authlib row",
                        "1 per expiry, 0 failed",
                        judge(ok),
                        None,
                        f"token endpoint outcomes {data['outcomes']}; refresh-token reuse "
                        f"detected {data['reuse_detected']}",
                        data,
                    )
                )
            if _peers.authlib_async_client() is None:
                rows.append(
                    Row(
                        TITLE,
                        "Authlib, shared token file",
                        "",
                        "not installed",
                        "—",
                        "not installed",
                    )
                )
            else:
                data = await run_variant(server, "authlib", workers, base, tmp)
                raw["authlib"] = data
                ctx.log(f"  Authlib: {describe(data)}, outcomes {data['outcomes']}")
                first = data["first_failure_s"]
                rows.append(
                    Row(
                        TITLE,
                        f"Authlib, {workers} processes, shared token file",
                        "—",
                        describe(data),
                        "—",
                        "info",
                        None,
                        f"token endpoint outcomes {data['outcomes']}; reuse detected "
                        f"{data['reuse_detected']}; first failed call after "
                        f"{first:.1f} s"
                        if first is not None
                        else "no failed call",
                        data,
                    )
                )
    notes = [
        f"Fake Keliweb server in the parent: rotation on, family revoked on reuse, access tokens "
        f"live {lifetime:g} s, {LATENCY * 1000:.0f} ms latency. {workers} worker processes "
        f"started together (ready/go handshake), {base['callers']} concurrent callers each, "
        f"{duration:g} s, {base['pause']:g} s pause between calls; a call = get a token + GET "
        "the protected API with it; failed = API answered 401 or getting a token raised.",
        "asynctoken workers: TokenManager(store=FileStore(path) | RedisStore(url, prefix)), "
        "each calling tm.add(key, provider, refresh_token=<same seed>) (stored only if absent).",
        "Authlib workers: AsyncOAuth2Client(token=<read from the shared JSON file>, "
        "token_endpoint, client_secret_post, update_token=<atomic write of that file>, "
        f"leeway={base['leeway']}), calling `await client.get(api_url)`. Authlib has no way to "
        "re-read a token another process wrote, nor a lock between processes.",
    ]
    return ScenarioResult("shared_credential", TITLE, rows, notes, raw=raw)
