"""One worker process of the shared-credential scenario (see :mod:`benchmarks.shared_credential`).

Usage: ``python -m benchmarks._shared_worker '<json config>'``. Prints ``ready``, waits for
``go`` on stdin, runs ``callers`` concurrent loops for ``duration`` seconds (get a token, call
the protected API with it, pause), then prints one JSON line with its counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ._infra import worker_handshake

Call = Callable[[], Awaitable[bool]]


class Tally:
    """Calls made, failed, and failures by kind."""

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.kinds: Counter[str] = Counter()
        self.first_failure: float | None = None

    def fail(self, kind: str, started: float) -> None:
        self.failed += 1
        self.kinds[kind] += 1
        if self.first_failure is None:
            self.first_failure = time.monotonic() - started


async def drive(config: dict[str, Any], call: Call, tally: Tally) -> None:
    """Run the callers after the handshake, for ``duration`` seconds."""
    await worker_handshake()
    started = time.monotonic()
    deadline = started + float(config["duration"])
    pause = float(config["pause"])

    async def caller() -> None:
        while time.monotonic() < deadline:
            tally.calls += 1
            try:
                if not await call():
                    tally.fail("HTTP 401", started)
            except Exception as exc:  # every failure counts; the kind is reported
                tally.fail(type(exc).__name__, started)
            await asyncio.sleep(pause)

    await asyncio.gather(*(caller() for _ in range(int(config["callers"]))))


async def run_asynctoken(config: dict[str, Any], tally: Tally) -> None:
    from asynctoken import KeliwebProvider, TokenManager
    from asynctoken.stores import FileStore, TokenStore

    store: TokenStore
    if config["mode"] == "file":
        store = FileStore(config["path"])
    else:
        from asynctoken.stores import RedisStore

        store = RedisStore(config["redis_url"], prefix=config["prefix"])
    provider = KeliwebProvider(
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        token_url=config["token_url"],
    )
    key = config["key"]
    async with TokenManager(store=store) as tm, aiohttp.ClientSession() as http:
        await tm.add(key, provider, refresh_token=config["seed"])  # stored only if absent

        async def call() -> bool:
            token = await tm.get_token(key)
            headers = {"Authorization": token.authorization}
            async with http.get(config["api_url"], headers=headers) as response:
                await response.read()
                return response.status == 200

        await drive(config, call, tally)


async def run_authlib(config: dict[str, Any], tally: Tally) -> None:
    from ._peers import authlib_async_client

    client_class = authlib_async_client()
    if client_class is None:
        raise SystemExit("Authlib is not installed")
    path = config["path"]

    async def update_token(token: dict[str, Any], **_: Any) -> None:
        # The documented pattern: persist the new token. Atomic replace, so readers never see
        # half a file.
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".token-")
        with os.fdopen(fd, "w") as handle:
            json.dump(dict(token), handle)
        os.replace(tmp, path)

    with open(path) as handle:
        token = json.load(handle)
    client = client_class(
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        token=token,
        token_endpoint=config["token_url"],
        token_endpoint_auth_method="client_secret_post",
        update_token=update_token,
        leeway=int(config["leeway"]),
    )

    async def call() -> bool:
        response = await client.get(config["api_url"])
        return bool(response.status_code == 200)

    try:
        await drive(config, call, tally)
    finally:
        await client.aclose()


def main() -> None:
    config = json.loads(sys.argv[1])
    tally = Tally()
    runner = run_authlib if config["mode"] == "authlib" else run_asynctoken
    asyncio.run(runner(config, tally))
    result = {
        "calls": tally.calls,
        "failed": tally.failed,
        "kinds": dict(tally.kinds),
        "first_failure_s": tally.first_failure,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
