"""A worker process for the multi-process tests: many callers sharing one credential.

Run as ``python tests/_worker.py MODE STORE TOKEN_URL API_URL [options]``; prints ``ready`` once
its manager is set up, then a final JSON line with its counters.

Modes:
    callers: ``--callers`` coroutines loop on an authorized API call through the middleware
        until the file ``--stop-file`` exists.
    refresh-loop: force refreshes back to back forever (for the kill -9 tests).
    once: one ``get_token``; prints the token's refresh-token prefix state as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp

from asynctoken import (
    FileStore,
    KeliwebProvider,
    Margins,
    RetryPolicy,
    SQLiteStore,
    TokenManager,
    TokenStore,
)

#: Margins of every worker: whole-second expiry is not an issue against the fake server, so no
#: in-flight allowance; the tests derive their timing bounds from these.
MARGINS = Margins(refresh=300, expiry=0.2, refresh_ratio=0.4, expiry_ratio=0.1, in_flight=0.0)


def open_store(spec: str) -> TokenStore:
    """``redis://…|prefix[|lock_ttl]`` (``cluster:redis://…`` for a Redis Cluster),
    ``sqlite:PATH`` or a FileStore path; sealed with the keys of ``ASYNCTOKEN_KEYS`` when set."""
    cipher = None
    if os.environ.get("ASYNCTOKEN_KEYS"):
        from asynctoken.crypto import AESGCMCipher

        cipher = AESGCMCipher.from_env()
    if spec.startswith(("redis://", "cluster:")):
        from asynctoken import RedisStore

        url, _, rest = spec.removeprefix("cluster:").partition("|")
        prefix, _, ttl = rest.partition("|")
        return RedisStore(
            url,
            prefix=prefix or "asynctoken:",
            lock_ttl=float(ttl or 60),
            cipher=cipher,
            cluster=spec.startswith("cluster:"),
        )
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"), cipher=cipher)
    return FileStore(spec, cipher=cipher)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    provider = KeliwebProvider(
        client_id="test-client", client_secret="test-secret", token_url=args.token_url
    )
    stats: dict[str, Any] = {"pid": os.getpid(), "calls": 0, "failed": 0, "errors": []}
    retry = RetryPolicy(attempts=3, deadline=10.0, initial_delay=0.05, max_delay=0.2)
    async with TokenManager(
        store=open_store(args.store),
        retry=retry,
        margins=MARGINS,
        lock_timeout=30.0,
    ) as tm:
        await tm.add("shared", provider)
        print("ready", flush=True)
        if args.mode == "once":
            token = await tm.get_token("shared")
            stats["refresh_token"] = token.refresh_token
            return stats
        if args.mode == "refresh-loop":
            while True:
                await tm.refresh("shared")
                stats["calls"] += 1
                await asyncio.sleep(args.pause)
        connector = aiohttp.TCPConnector(limit=20)
        async with aiohttp.ClientSession(
            connector=connector, middlewares=[tm.middleware("shared")]
        ) as session:

            async def caller() -> None:
                while not os.path.exists(args.stop_file):
                    try:
                        async with session.get(args.api_url) as resp:
                            await resp.read()
                            ok = resp.status == 200
                    except Exception as exc:  # counted, reported
                        ok = False
                        if len(stats["errors"]) < 5:
                            stats["errors"].append(f"{type(exc).__name__}: {exc}")
                    stats["calls"] += 1
                    if not ok:
                        stats["failed"] += 1
                    # Pace the loop so that 8 processes x 100 callers do not saturate 2 cores.
                    await asyncio.sleep(args.pause)

            await asyncio.gather(*(caller() for _ in range(args.callers)))
    return stats


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["callers", "refresh-loop", "once"])
    parser.add_argument("store")
    parser.add_argument("token_url")
    parser.add_argument("api_url")
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--stop-file", default="")
    started = time.monotonic()
    result = asyncio.run(main(parser.parse_args()))
    result["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(result), flush=True)
    sys.exit(0)
