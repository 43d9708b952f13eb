"""A sync worker process for the fleet tests: threads calling an API through requests + TokenAuth.

Run as ``python tests/_sync_worker.py MODE STORE TOKEN_URL API_URL [options]``; prints
``ready``, then one JSON line of counters per process that called the API (``pid``, ``calls``,
``failed``, ``errors``, ``forked``), once ``--stop-file`` exists.

Modes:
    threads: one SyncTokenManager, ``--threads`` threads.
    fork: the SyncTokenManager is created and used (a token fetched, its loop thread running)
        BEFORE ``--children`` children are forked with multiprocessing's "fork" start method;
        each child runs ``--threads`` threads on the manager it inherited, and the parent keeps
        two threads of its own calling meanwhile.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

import requests
from _worker import MARGINS

from asynctoken import FileStore, KeliwebProvider, RetryPolicy, TokenStore
from asynctoken.requests import TokenAuth
from asynctoken.sync import SyncTokenManager

KEY = "shared"


def open_store(spec: str) -> TokenStore:
    if spec.startswith("redis://"):
        from asynctoken import RedisStore

        url, _, prefix = spec.partition("|")
        return RedisStore(url, prefix=prefix or "asynctoken:")
    return FileStore(spec)


def manager(args: argparse.Namespace) -> SyncTokenManager:
    """The same settings as the async workers (tests/_worker.py)."""
    tm = SyncTokenManager(
        store=open_store(args.store),
        retry=RetryPolicy(attempts=3, deadline=10.0, initial_delay=0.05, max_delay=0.2),
        margins=MARGINS,
        lock_timeout=30.0,
    )
    provider = KeliwebProvider("test-client", "test-secret", token_url=args.token_url)
    tm.add(KEY, provider)
    return tm


def call_until_stopped(tm: SyncTokenManager, args: argparse.Namespace, threads: int) -> None:
    """Run ``threads`` callers until the stop file exists; print this process's counters."""
    stats: dict[str, Any] = {"pid": os.getpid(), "calls": 0, "failed": 0, "errors": []}
    stats["forked"] = args.mode == "fork" and os.getpid() != PARENT
    lock = threading.Lock()
    auth = TokenAuth(tm, KEY)

    def caller() -> None:
        with requests.Session() as http:
            http.auth = auth
            while not os.path.exists(args.stop_file):
                error = None
                try:
                    ok = http.get(args.api_url, timeout=10).status_code == 200
                except Exception as exc:  # counted, reported
                    ok, error = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    stats["calls"] += 1
                    stats["failed"] += not ok
                    if error and len(stats["errors"]) < 5:
                        stats["errors"].append(error)
                time.sleep(args.pause)  # pacing, so that the fleet does not saturate 2 cores

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(json.dumps(stats), flush=True)


def child(args: argparse.Namespace) -> None:
    try:
        call_until_stopped(TM, args, args.threads)
    finally:
        TM.close()
        sys.stdout.flush()


PARENT = os.getpid()
TM: SyncTokenManager


def main() -> None:
    global TM
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["threads", "fork"])
    parser.add_argument("store")
    parser.add_argument("token_url")
    parser.add_argument("api_url")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--stop-file", required=True)
    args = parser.parse_args()
    TM = manager(args)
    if args.mode == "threads":
        print("ready", flush=True)
        with TM:
            call_until_stopped(TM, args, args.threads)
        return
    TM.get_token(KEY)  # used before the fork: a loop thread runs, a token is cached
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=child, args=(args,)) for _ in range(args.children)]
    for process in children:
        process.start()
    print("ready", flush=True)
    with TM:
        call_until_stopped(TM, args, 2)
        for process in children:
            process.join(60)
    codes = [process.exitcode for process in children]
    if codes != [0] * len(children):
        print(f"children exited with {codes}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
