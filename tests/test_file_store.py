"""FileStore against real files, real fsync and real processes (SIGKILL included)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import psutil
import pytest
from filelock import FileLock
from support import FAST_RETRY, collect, keliweb, token

from asynctoken import ConfigurationError, StoreError, StoreLockTimeoutError, Token, TokenManager
from asynctoken.stores import FileStore
from asynctoken.testing import FakeOAuthServer

REPO = Path(__file__).resolve().parents[1]
SECRET = "rt-SUPER-SECRET-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Run ``code`` in a fresh interpreter that imports this checkout of asynctoken."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes of a test; they and their own children are killed at the end."""
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            for descendant in psutil.Process(child.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    descendant.kill()
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


# -- format, permissions, atomicity -------------------------------------------------------------


async def test_file_format(path: Path) -> None:
    store = FileStore(path)
    await store.put("tenant/1", token(1))
    await store.put("tenant/2", token(2))
    data = json.loads(path.read_text("utf-8"))
    generation = data.pop("generation")
    assert re.fullmatch(r"[0-9a-f]{32}", generation)
    assert data == {
        "format": "asynctoken.filestore",
        "version": 1,
        "credentials": {"tenant/1": token(1).to_dict(), "tenant/2": token(2).to_dict()},
    }
    # One record per line, so that a write re-encodes only what it changes.
    lines = path.read_text("utf-8").splitlines()
    assert lines[0].endswith('"credentials": {')
    assert lines[1].startswith('"tenant/1": {')
    assert lines[2].startswith('"tenant/2": {')
    assert lines[3:] == ["}}"]
    await store.put("tenant/1", token(3))
    assert json.loads(path.read_text("utf-8"))["generation"] != generation


async def test_an_indented_file_of_an_older_version_is_read_and_rewritten(path: Path) -> None:
    record = {**token(1).to_dict(), "added_later": [1, 2]}
    document = {"format": "asynctoken.filestore", "version": 1, "credentials": {"old": record}}
    path.write_text(json.dumps(document, indent=1))
    store = FileStore(path)
    assert await store.get("old") == token(1)
    await store.put("new", token(2))
    assert json.loads(path.read_text())["credentials"] == {"old": record, "new": token(2).to_dict()}
    assert await FileStore(path).get("old") == token(1)


async def test_concurrent_writes_of_one_process_share_file_writes(path: Path) -> None:
    """A thousand credentials saved at once: the writes queued while one is in progress are
    applied together (each with its own result), not one whole-file rewrite each."""
    store = FileStore(path)
    await store.put("seed", token(0))
    versions = set()  # the random generation of each version of the file seen after a write

    async def add(n: int) -> bool:
        won = await store.put_if_absent(f"tenant-{n}", token(n))
        with path.open() as file:
            versions.add(file.readline())
        return won

    results = await asyncio.gather(*(add(n) for n in range(1000)))
    assert results == [True] * 1000
    assert not await store.put_if_absent("tenant-5", token(5))
    assert len(versions) < 100, len(versions)
    reader = FileStore(path)
    assert len(await collect(reader.keys())) == 1001
    assert await reader.get("tenant-999") == token(999)


async def test_a_failed_batch_fails_each_write_and_keeps_the_file(path: Path) -> None:
    store = FileStore(path, lock_timeout=0.2)
    await store.put("k", token(1))
    with FileLock(f"{path}.lock"):  # another process holds the write lock too long
        results = await asyncio.gather(
            *(store.put(f"k{n}", token(n)) for n in range(5)), return_exceptions=True
        )
    assert all(isinstance(r, StoreLockTimeoutError) for r in results), results
    assert set(await collect(store.keys())) == {"k"}


async def test_missing_file_is_an_empty_store_and_no_op_writes_create_nothing(path: Path) -> None:
    store = FileStore(path)
    assert await store.get("k") is None
    assert await collect(store.keys()) == []
    assert await store.delete("k") is False
    assert await store.replace("k", token(1), expected_refresh_token=None) is False
    assert not path.exists()


async def test_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "tokens.json"
    old = os.umask(0)
    try:
        store = FileStore(path)
        await store.put("k", token(1))
        async with store.lock("k", timeout=1):
            pass
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert mode(Path(f"{path}.lock")) == 0o600
    assert mode(Path(f"{path}.locks")) == 0o700
    assert {mode(p) for p in Path(f"{path}.locks").iterdir()} == {0o600}


async def test_writes_leave_no_temporary_files(path: Path) -> None:
    store = FileStore(path)
    for n in range(30):
        await store.put(f"k{n % 5}", token(n))
    await store.replace("k0", token(99), expected_refresh_token="refresh-25")
    await store.delete("k1")
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]
    assert set(await collect(store.keys())) == {"k0", "k2", "k3", "k4"}


ZYGOTE = """
    # Imports once, then forks a writer per line on stdin: a fork costs milliseconds where a new
    # interpreter costs a third of a second, so the test can kill many writers quickly.
    import asyncio, itertools, os, signal, sys
    from asynctoken import Token
    from asynctoken.stores import FileStore

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed writers are reaped by the kernel

    async def write_forever(path):
        store = FileStore(path)
        for n in itertools.count():
            # Big records (a file of hundreds of kB) keep each write long enough for a SIGKILL
            # to land inside it; every write also changes the file's size.
            size = (n * 7919 + os.getpid()) % 60_000
            await store.put(
                f"key-{n % 13}",
                Token(access_token="a" * size, expires_at=float(n), refresh_token=f"r{n}"),
            )
            if n == 0:  # one write(2): lines of concurrent writers never interleave
                os.write(1, f"{os.getpid()}\\n".encode())

    for _line in sys.stdin:
        if os.fork() == 0:  # single-threaded here: forking is safe
            try:
                asyncio.run(write_forever(sys.argv[1]))
            finally:
                os._exit(1)
"""


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_mid_write_never_leaves_an_unparsable_file(
    path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    zygote = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ZYGOTE), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    processes.append(zygote)
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    rng = random.Random(1234)
    kills = 0
    orphans = 0
    for _wave in range(8):
        zygote.stdin.write("fork\n" * 3)
        zygote.stdin.flush()
        writers = [int(zygote.stdout.readline()) for _ in range(3)]  # each wrote once
        assert all(psutil.Process(pid).ppid() == zygote.pid for pid in writers)
        for pid in writers:
            time.sleep(rng.uniform(0.0, 0.01))
            os.kill(pid, signal.SIGKILL)
            kills += 1
        deadline = time.monotonic() + 10
        while any(map(is_alive, writers)):
            assert time.monotonic() < deadline, "killed writers did not exit"
            time.sleep(0.001)
        data = json.loads(path.read_bytes())  # always a whole file, old or new
        assert data["format"] == "asynctoken.filestore"
        assert all(Token.from_dict(record) for record in data["credentials"].values())
        orphans += len(list(path.parent.glob(".tokens.json.*.tmp")))
    assert kills >= 20
    # The next writer removes what the killed ones left behind.
    store = FileStore(path)
    asyncio.run(store.put("after", token(1)))
    assert not list(path.parent.glob(".tokens.json.*.tmp")), f"{orphans} orphans seen"
    assert asyncio.run(store.get("after")) == token(1)


# -- bad files ----------------------------------------------------------------------------------

VALID = json.dumps(
    {
        "format": "asynctoken.filestore",
        "version": 1,
        "credentials": {"k": {"access_token": "a", "expires_at": 1, "refresh_token": SECRET}},
    }
).encode()

BAD_FILES = {
    "empty": b"",
    "not-json": b"{this is not json",
    "truncated": VALID[: len(VALID) // 2 + 20],
    "not-utf8": b'{"format": "\xff\xfe"}',
    "foreign-json": b'{"hello": "world"}',
    "other-format": b'{"format": "something.else", "version": 1, "credentials": {}}',
    "array": b"[1, 2, 3]",
    "credentials-not-object": (
        b'{"format": "asynctoken.filestore", "version": 1, "credentials": []}'
    ),
    "version-not-int": b'{"format": "asynctoken.filestore", "version": "1", "credentials": {}}',
}


@pytest.mark.parametrize("content", list(BAD_FILES.values()), ids=list(BAD_FILES))
async def test_bad_file_is_reported_kept_and_copied_aside_once(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    store = FileStore(path)
    with pytest.raises(StoreError) as caught:
        await store.get("k")
    error = caught.value
    assert error.location == str(path)
    assert str(path) in str(error)
    assert SECRET not in str(error)
    [copy] = corrupt_copies(path)
    assert str(copy) in str(error)
    assert copy.read_bytes() == content
    assert mode(copy) == 0o600

    # Every other call fails too, writes included, and nothing is overwritten.
    with pytest.raises(StoreError):
        await store.put("k", token(1))
    with pytest.raises(StoreError):
        await store.put_if_absent("new", token(1))
    with pytest.raises(StoreError):
        await store.replace("k", token(1), expected_refresh_token=SECRET)
    with pytest.raises(StoreError):
        await store.delete("k")
    with pytest.raises(StoreError):
        _ = await collect(store.keys())
    with pytest.raises(StoreError):
        await FileStore(path).get("k")  # another instance (or process) reuses the copy
    assert path.read_bytes() == content
    assert corrupt_copies(path) == [copy]


async def test_repaired_file_is_used_again(path: Path) -> None:
    path.write_bytes(b"garbage")
    store = FileStore(path)
    with pytest.raises(StoreError):
        await store.get("k")
    path.unlink()
    await store.put("k", token(1))
    assert await store.get("k") == token(1)


async def test_bad_record_names_the_key_and_spares_the_others(path: Path) -> None:
    bad = {"access_token": 5, "refresh_token": SECRET}
    document = {
        "format": "asynctoken.filestore",
        "version": 1,
        "credentials": {"good": token(1).to_dict(), "bad": bad},
    }
    path.write_text(json.dumps(document))
    store = FileStore(path)
    with pytest.raises(StoreError) as caught:
        await store.get("bad")
    assert caught.value.key == "bad"
    assert "access_token" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(StoreError):
        await store.replace("bad", token(2), expected_refresh_token=SECRET)
    assert await store.get("good") == token(1)
    await store.put("other", token(3))  # the bad record is kept as it was
    assert json.loads(path.read_text())["credentials"]["bad"] == bad
    await store.put("bad", token(4))  # an explicit put repairs it
    assert await store.get("bad") == token(4)
    assert not corrupt_copies(path)


async def test_newer_major_version_asks_for_an_upgrade(path: Path) -> None:
    content = b'{"format": "asynctoken.filestore", "version": 2, "credentials": {"k": 1}}'
    path.write_bytes(content)
    store = FileStore(path)
    with pytest.raises(StoreError, match="upgrade asynctoken") as caught:
        await store.get("k")
    assert caught.value.location == str(path)
    with pytest.raises(StoreError, match="upgrade"):
        await store.put("k", token(1))
    assert path.read_bytes() == content
    assert not corrupt_copies(path)  # not corrupt, just newer


async def test_unknown_fields_are_ignored_and_kept(path: Path) -> None:
    record = {**token(1).to_dict(), "added_later": [1, 2]}
    document = {
        "format": "asynctoken.filestore",
        "version": 1,
        "written_by": "asynctoken 9.9",
        "credentials": {"k": record},
    }
    path.write_text(json.dumps(document))
    store = FileStore(path)
    assert await store.get("k") == token(1)
    await store.put("other", token(2))
    data = json.loads(path.read_text())
    assert data["written_by"] == "asynctoken 9.9"
    assert data["credentials"]["k"] == record


# -- reading and caching ------------------------------------------------------------------------


async def test_sees_changes_made_by_another_instance(path: Path) -> None:
    reader, writer = FileStore(path), FileStore(path)
    await writer.put("k", token(1))
    old = time.time() - 60
    os.utime(path, (old, old))  # a settled file: the reader may cache its parse
    assert await reader.get("k") == token(1)
    assert await reader.get("k") == token(1)
    await writer.put("k", token(2))
    assert await reader.get("k") == token(2)
    await writer.delete("k")
    assert await reader.get("k") is None
    path.unlink()
    assert await reader.get("k") is None


async def test_reads_do_not_wait_for_the_write_lock(path: Path) -> None:
    store = FileStore(path, lock_timeout=0.2)
    await store.put("k", token(1))
    with FileLock(f"{path}.lock"):  # another process is writing
        assert await store.get("k") == token(1)
        with pytest.raises(StoreLockTimeoutError) as caught:
            await store.put("k", token(2))
    assert caught.value.key == "k"
    assert str(path) in str(caught.value)
    await store.put("k", token(2))


# -- locks across processes ---------------------------------------------------------------------

HOLDER = """
    import asyncio, sys
    from asynctoken.stores import FileStore

    async def main():
        async with FileStore(sys.argv[1]).lock(sys.argv[2], timeout=5):
            print("locked", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
"""


async def test_lock_of_a_killed_process_is_released(
    path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    holder = spawn(HOLDER, str(path), "tenant-1")
    processes.append(holder)
    assert holder.stdout is not None
    line = await anyio.to_thread.run_sync(holder.stdout.readline)
    assert line == "locked\n", holder.communicate()[1]
    store = FileStore(path, poll_interval=0.01)

    with pytest.raises(StoreLockTimeoutError) as caught:
        async with store.lock("tenant-1", timeout=0.3):
            pytest.fail("entered a lock held by another process")
    assert caught.value.key == "tenant-1"
    assert str(path) in str(caught.value)
    async with store.lock("tenant-2", timeout=0.3):  # other keys are free
        pass

    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
    await anyio.to_thread.run_sync(holder.wait)
    started = time.monotonic()
    async with store.lock("tenant-1", timeout=5):
        pass
    assert time.monotonic() - started < 1


async def test_waiting_for_a_lock_does_not_block_the_event_loop(path: Path) -> None:
    holder, waiter = FileStore(path), FileStore(path)  # two instances: the OS lock decides
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async with holder.lock("k", timeout=1):
        task = asyncio.create_task(ticker())
        with pytest.raises(StoreLockTimeoutError):
            async with waiter.lock("k", timeout=0.4):
                pass
        task.cancel()
    assert ticks > 20


async def test_cancelled_waiters_never_keep_the_os_lock(path: Path) -> None:
    # Two instances, so the waiter polls the OS lock (in a worker thread) rather than queueing on
    # the in-process lock; cancelling it around the holder's release must not leak the lock.
    holder = FileStore(path, poll_interval=0.001)
    waiter = FileStore(path, poll_interval=0.001)

    async def wait() -> None:
        async with waiter.lock("k", timeout=5):
            await asyncio.sleep(0)

    for round_ in range(20):
        async with holder.lock("k", timeout=1):
            task = asyncio.create_task(wait())
            for _ in range(round_ % 4):
                await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with holder.lock("k", timeout=1):
            pass
    await asyncio.sleep(0.05)  # let abandoned attempts finish
    async with holder.lock("k", timeout=0.1):
        pass


CONCURRENT_WRITER = """
    import asyncio, os, sys, time
    from asynctoken import Token
    from asynctoken.stores import FileStore

    async def main():
        path, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
        store = FileStore(path)
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        won = await store.put_if_absent("shared", Token(access_token=name, expires_at=1.0))
        for n in range(50):
            token = Token(access_token=f"{name}-{n}", expires_at=float(n), refresh_token=name)
            await store.put(f"{name}/{n}", token)
        print("won" if won else "lost", flush=True)

    asyncio.run(main())
"""


async def test_concurrent_writers_in_many_processes_lose_no_update(
    path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    go = path.parent / "go"
    names = [f"proc{i}" for i in range(4)]
    children = [spawn(CONCURRENT_WRITER, str(path), name, str(go)) for name in names]
    processes.extend(children)
    for child in children:
        assert child.stdout is not None
        assert await anyio.to_thread.run_sync(child.stdout.readline) == "ready\n"
    go.touch()
    outcomes = []
    for child in children:
        out, err = await anyio.to_thread.run_sync(child.communicate)
        assert child.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]

    store = FileStore(path)
    keys = set(await collect(store.keys()))
    assert keys == {"shared"} | {f"{name}/{n}" for name in names for n in range(50)}
    for name in names:
        for n in (0, 25, 49):
            stored = await store.get(f"{name}/{n}")
            assert stored is not None
            assert stored.access_token == f"{name}-{n}"


# -- symbolic links and shared access -----------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """``(link, real)``: the token file named through a symbolic link, and its real path."""
    real = tmp_path / "data" / "tokens.json"
    real.parent.mkdir()
    link = tmp_path / "tokens.json"
    link.symlink_to(real)
    return link, real


async def test_a_symlinked_path_writes_through_to_its_target(linked: tuple[Path, Path]) -> None:
    link, real = linked
    via_link, via_real = FileStore(link), FileStore(real)
    assert via_link.path == str(real)
    await via_real.put("k", token(1))
    await via_link.put("k", token(2))
    await via_link.put("other", token(3))
    assert link.is_symlink(), "the write replaced the link instead of its target"
    assert await via_real.get("k") == token(2)
    assert set(await collect(via_real.keys())) == {"k", "other"}
    assert Path(f"{real}.lock").exists()
    assert not Path(f"{link}.lock").exists()


async def test_a_process_using_the_real_path_is_excluded_by_a_lock_taken_through_a_link(
    linked: tuple[Path, Path], processes: list[subprocess.Popen[str]]
) -> None:
    link, real = linked
    holder = spawn(HOLDER, str(real), "tenant-1")
    processes.append(holder)
    assert holder.stdout is not None
    line = await anyio.to_thread.run_sync(holder.stdout.readline)
    assert line == "locked\n", holder.communicate()[1]
    with pytest.raises(StoreLockTimeoutError):
        async with FileStore(link, poll_interval=0.01).lock("tenant-1", timeout=0.3):
            pytest.fail("entered a lock that a process holds through the real path")


async def test_managers_using_a_link_and_the_real_path_refresh_once(
    server: FakeOAuthServer, linked: tuple[Path, Path]
) -> None:
    link, real = linked
    a = TokenManager(store=FileStore(link), retry=FAST_RETRY)
    b = TokenManager(store=FileStore(real), retry=FAST_RETRY)
    try:
        seed = Token(access_token="", expires_at=0, refresh_token=server.issue_refresh_token())
        await FileStore(real).put("k", seed)
        await a.add("k", keliweb(server))
        await b.add("k", keliweb(server))
        server.hold()
        first = asyncio.create_task(a.get_token("k"))
        await server.wait_for_token_requests(1)  # A holds the refresh lock, through the link
        second = asyncio.create_task(b.get_token("k"))
        await asyncio.wait({second}, timeout=0.2)
        server.release()
        token_a, token_b = await asyncio.gather(first, second)
        assert token_a == token_b
        assert server.token_requests == 1
        assert server.reuse_detected == 0
    finally:
        await a.aclose()
        await b.aclose()
    assert link.is_symlink()


def other_owner() -> tuple[int, int]:
    """An owner and group to give the token file: anyone as root, else this user and another
    group it belongs to (this user's own group if it has no other)."""
    if os.geteuid() == 0:
        return 4242, 4343
    groups = [g for g in os.getgroups() if g != os.getegid()]
    return os.geteuid(), groups[0] if groups else os.getegid()


async def test_a_rewrite_keeps_the_owner_group_and_mode_of_the_file(path: Path) -> None:
    store = FileStore(path)
    await store.put("k", token(1))
    assert mode(path) == 0o600  # a new file is private
    uid, gid = other_owner()
    os.chown(path, uid, gid)
    os.chmod(path, 0o640)  # shared with a second service account through the group
    await store.put("k", token(2))
    await store.delete("k")
    await store.put("k", token(3))
    st = path.stat()
    assert (mode(path), st.st_gid, st.st_uid) == (0o640, gid, uid)
    assert await store.get("k") == token(3)


async def test_lock_files_follow_the_owner_and_group_of_the_token_file(path: Path) -> None:
    uid, gid = other_owner()
    if (uid, gid) == (os.geteuid(), os.getegid()):
        pytest.skip("needs root, or membership of a second group")
    await FileStore(path).put("k", token(1))
    os.chown(path, uid, gid)
    os.chmod(path, 0o640)
    # Another store (an operator's command, say) writes and locks: the application's account,
    # or anyone in the group, must still be able to take the locks afterwards.
    store = FileStore(path)
    await store.put("k", token(2))
    async with store.lock("k", timeout=1):
        pass
    locks = Path(f"{path}.locks")
    for lock_path, expected in [(Path(f"{path}.lock"), 0o660), (locks, 0o770)]:
        st = lock_path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (expected, gid), lock_path
        assert st.st_uid == uid, lock_path
    for lock_file in locks.iterdir():
        st = lock_file.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, uid, gid)


# -- misc -----------------------------------------------------------------------------------------


def test_repr_and_path(path: Path) -> None:
    store = FileStore(path)
    assert repr(store) == f"FileStore(path={str(path)!r})"
    assert store.path == str(path)


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert FileStore("tokens.json").path == str(tmp_path / "tokens.json")


@pytest.mark.parametrize("kwargs", [{"lock_timeout": 0}, {"poll_interval": -1.0}])
def test_invalid_arguments(path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        FileStore(path, **kwargs)


async def test_unserialisable_token_is_refused_before_writing(path: Path) -> None:
    store = FileStore(path)
    await store.put("k", token(1))
    bad = Token(access_token="a", expires_at=1.0, extra={"when": object()})
    with pytest.raises(StoreError) as caught:
        await store.put("k", bad)
    assert caught.value.key == "k"
    assert await store.get("k") == token(1)


async def test_lock_timeout_holds_while_the_local_lock_is_handed_over(tmp_path: Path) -> None:
    """FileStore._acquire_local awaits the asyncio.Lock WITHOUT a timeout when locked() is
    False, but a released asyncio.Lock that already woke a waiter reports locked() False while
    new acquirers still queue behind that waiter. The timeout is then not enforced."""
    store = FileStore(tmp_path / "tokens.json")
    holder_in = asyncio.Event()
    holder_may_leave = asyncio.Event()
    waiter_in = asyncio.Event()
    waiter_may_leave = asyncio.Event()
    outcome: list[str] = []

    async def holder() -> None:
        async with store.lock("k", timeout=5):
            holder_in.set()
            await holder_may_leave.wait()
        # Released: the waiter below is woken but has not run yet. Ask again, briefly.
        try:
            async with store.lock("k", timeout=0.2):
                outcome.append("acquired")
        except StoreLockTimeoutError:
            outcome.append("timed out")

    async def waiter() -> None:
        async with store.lock("k", timeout=5):
            waiter_in.set()
            await waiter_may_leave.wait()

    holder_task = asyncio.create_task(holder())
    await holder_in.wait()
    waiter_task = asyncio.create_task(waiter())
    local = store._key_locks._local["k"][0]
    while not local._waiters:
        await asyncio.sleep(0)
    holder_may_leave.set()
    await waiter_in.wait()
    try:
        # The waiter holds the lock for longer than the 0.2 s timeout: the holder's second
        # attempt must give up with StoreLockTimeoutError.
        done, _ = await asyncio.wait({holder_task}, timeout=3)
        assert holder_task in done, "lock(timeout=0.2) still waiting after 3 s"
        assert outcome == ["timed out"]
    finally:
        waiter_may_leave.set()
        await asyncio.gather(holder_task, waiter_task)
