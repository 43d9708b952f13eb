"""A worker process for the OpenID-provider tests: API calls with several credentials, each with
its own client authentication (and DPoP or certificate binding), sharing one FileStore.

Run as ``python tests/_oidc_worker.py CONFIG.json``; prints ``ready`` once its manager is set
up, then loops until the file ``stop_file`` exists and prints one JSON line of counters per
credential: ``{"key": {"calls": n, "failed": n, "errors": [...]}}``.

CONFIG: ``store`` (FileStore path), ``stop_file``, ``callers`` (coroutines per credential),
``credentials``: a list of ``{"key", "provider": {OAuth2Provider kwargs, ``private_key`` as a
PEM path, ``client_cert`` as ``[cert, key, ca]`` paths}, "resource": URL}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp

from asynctoken import FileStore, Margins, OAuth2Provider, RetryPolicy, TokenManager

# A 4-second token: fresh for 1.6 s, no longer handed out 1.5 s before its nominal expiry (the
# server counts whole seconds, so it may die up to 1 s early; a loopback request takes far less
# than the 0.5 s in flight allowed).
MARGINS = Margins(refresh=3.0, expiry=1.5, refresh_ratio=0.6, expiry_ratio=0.4, in_flight=0.5)


def build_provider(spec: dict[str, Any]) -> OAuth2Provider:
    kwargs = dict(spec)
    if "private_key" in kwargs:
        kwargs["private_key"] = Path(kwargs["private_key"]).read_bytes()
    if "client_cert" in kwargs:
        cert, key, ca = kwargs["client_cert"]
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        kwargs["client_cert"] = context
    return OAuth2Provider(**kwargs)


async def caller(
    tm: TokenManager,
    key: str,
    session: aiohttp.ClientSession,
    url: str,
    stop: Path,
    counters: dict[str, Any],
) -> None:
    while not stop.exists():
        try:
            async with session.get(url) as resp:
                await resp.read()
                ok = resp.status == 200
                detail = f"HTTP {resp.status} {resp.headers.get('WWW-Authenticate')}"
        except Exception as exc:  # counted and reported
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        counters["calls"] += 1
        if not ok:
            counters["failed"] += 1
            if len(counters["errors"]) < 5:
                counters["errors"].append(detail)
        await asyncio.sleep(0.02)  # a steady, bounded request rate: ~50/s per caller


async def main(config: dict[str, Any]) -> dict[str, Any]:
    stop = Path(config["stop_file"])
    results: dict[str, Any] = {}
    retry = RetryPolicy(attempts=3, deadline=10.0, initial_delay=0.05, max_delay=0.2)
    async with TokenManager(
        store=FileStore(config["store"]), retry=retry, margins=MARGINS, lock_timeout=30.0
    ) as tm:
        sessions = []
        tasks = []
        for credential in config["credentials"]:
            key = credential["key"]
            provider = build_provider(credential["provider"])
            await tm.add(key, provider)
            # A certificate-bound token goes only over connections presenting the certificate.
            connector = aiohttp.TCPConnector(ssl=provider.ssl_context or True)
            session = aiohttp.ClientSession(connector=connector, middlewares=[tm.middleware(key)])
            sessions.append(session)
            counters: dict[str, Any] = {"calls": 0, "failed": 0, "errors": []}
            results[key] = counters
            for _ in range(config["callers"]):
                tasks.append(
                    asyncio.create_task(
                        caller(tm, key, session, credential["resource"], stop, counters)
                    )
                )
        print("ready", flush=True)
        await asyncio.gather(*tasks)
        for session in sessions:
            await session.close()
    results["pid"] = os.getpid()
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(asyncio.run(main(json.load(f)))), flush=True)
