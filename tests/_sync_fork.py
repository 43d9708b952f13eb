"""A parent process for the fork tests: it creates and uses its managers, then forks.

Run as ``python tests/_sync_fork.py MODE PATH TOKEN_URL SEED`` (a ``.db`` PATH is an SQLiteStore,
anything else a FileStore); it reads commands from stdin
and prints JSON lines (parent and child share stdin and stdout).

1. prints ``ready`` once its managers have a token;
2. on ``refresh``: starts a forced refresh in a thread of its own (the test parks it at the
   server, so the store's refresh lock is held by this process);
3. on ``fork``: forks. The child, in MODE ``refresh``, gets a token at once, then refreshes
   (waiting for the parent's lock); in MODE ``orphan``, it waits for ``go`` (sent after the
   test killed the parent) and removes the credential, which needs the refresh lock. Either
   way it also tries a manager whose MemoryStore cannot follow it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from typing import Any

from asynctoken import FileStore, KeliwebProvider, SQLiteStore, Token, TokenError
from asynctoken.sync import SyncTokenManager


def child(mode: str, tm: SyncTokenManager, memory: SyncTokenManager, first: Token) -> None:
    result: dict[str, Any] = {"who": "child"}
    if mode == "orphan":
        assert sys.stdin.readline().strip() == "go"
    result["same_token"] = tm.get_token("k").access_token == first.access_token
    if mode == "refresh":
        print(json.dumps({"who": "child", "refreshing": True}), flush=True)
        result["refreshed"] = tm.refresh("k").access_token
    else:
        result["removed"] = tm.remove("k")
    try:
        memory.get_token("m")
    except TokenError as exc:
        result["memory_error"] = str(exc)
    tm.close()
    print(json.dumps(result), flush=True)


def main() -> None:
    mode, path, token_url, seed = sys.argv[1:]
    provider = KeliwebProvider("test-client", "test-secret", token_url=token_url)
    store = SQLiteStore(path) if path.endswith(".db") else FileStore(path)
    tm = SyncTokenManager(store=store, lock_timeout=10)
    tm.add("k", provider, refresh_token=seed)
    first = tm.get_token("k")
    memory = SyncTokenManager()
    memory.add("m", provider)
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "refresh"
    refreshed: list[Token] = []
    refresher = threading.Thread(target=lambda: refreshed.append(tm.refresh("k")))
    refresher.start()
    assert sys.stdin.readline().strip() == "fork"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child(mode, tm, memory, first)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    print(json.dumps({"who": "parent", "forked": pid}), flush=True)
    refresher.join()
    os.waitpid(pid, 0)
    print(json.dumps({"who": "parent", "refreshed": refreshed[0].access_token}), flush=True)
    tm.close()
    memory.close()


if __name__ == "__main__":
    main()
