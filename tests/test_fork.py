"""A TokenManager and os.fork (gunicorn --preload, multiprocessing): a manager the parent used is
refused in the child with a clear error; one the parent only created works in each child.

The forking happens in a subprocess of its own (a clean, single-purpose process), against the
fake server of this test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

import pytest

from asynctoken.testing import FakeOAuthServer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from asynctoken import ConfigurationError, FileStore, KeliwebProvider, TokenManager

    token_url, refresh_token, store_path, use_in_parent = sys.argv[1:5]
    provider = KeliwebProvider("test-client", "test-secret", token_url=token_url)
    tm = TokenManager(store=FileStore(store_path))  # at import time, as with --preload


    async def register() -> None:
        await tm.add("k", provider, refresh_token=refresh_token)
        await tm.get_token("k")


    if use_in_parent == "yes":
        asyncio.run(register())


    async def child() -> dict:
        try:
            if use_in_parent != "yes":
                await tm.add("k", provider, refresh_token=refresh_token)
            token = await tm.get_token("k")
        except ConfigurationError as exc:
            return {"error": str(exc)}
        finally:
            await tm.aclose()
        return {"token": bool(token.access_token)}


    reads = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            result = asyncio.run(child())
            os.write(write, json.dumps({"pid": os.getpid(), **result}).encode())
            os._exit(0)
        os.close(write)
        reads.append((pid, read))
    results = []
    for pid, read in reads:
        with os.fdopen(read, "rb") as pipe:
            results.append(json.loads(pipe.read()))
        os.waitpid(pid, 0)
    print(json.dumps({"parent": os.getpid(), "children": results}))
    """
)


async def fork_children(server: FakeOAuthServer, tmp_path: object, use_in_parent: bool) -> dict:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", SCRIPT, server.token_url, server.issue_refresh_token()),
        *(f"{tmp_path}/tokens.json", "yes" if use_in_parent else "no"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_a_manager_used_before_the_fork_is_refused_in_the_children(
    server: FakeOAuthServer, tmp_path: object
) -> None:
    result = await fork_children(server, tmp_path, use_in_parent=True)
    assert len(result["children"]) == 2
    for child in result["children"]:
        message = child["error"]
        assert f"used in process {result['parent']}" in message
        assert f"forked process {child['pid']}" in message
        assert "cleanup_ctx" in message
        assert "lifespan" in message
    assert server.token_requests == 1  # the parent's; the children sent nothing


async def test_a_manager_only_created_before_the_fork_works_in_each_child(
    server: FakeOAuthServer, tmp_path: object
) -> None:
    result = await fork_children(server, tmp_path, use_in_parent=False)
    assert [child["token"] for child in result["children"]] == [True, True]
    assert server.token_requests == 1  # the children shared one refresh through the FileStore
    assert server.reuse_detected == 0
