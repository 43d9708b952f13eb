"""The command line, run as a subprocess (``python -m asynctoken``) as a person would run it.

Token endpoints are FakeOAuthServers in the test's event loop; the subprocess reaches them over
loopback, so subprocesses are run with asyncio, never blocking the loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis_server import RedisServer

from asynctoken import FileStore, Token, __version__
from asynctoken.cli import _DemoStats, _summarize
from asynctoken.testing import FakeOAuthServer

CLIENT_SECRET = "cli-test-client-secret-0123456789"
PASSWORD = "cli-test-password-0123456789"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def assert_no_secrets(self, *secrets: str | None) -> None:
        for secret in secrets:
            assert secret, "a secret to look for must be non-empty"
            assert secret not in self.out
            assert secret not in self.err


async def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> Result:
    """Run ``python -m asynctoken ARGS`` with stdin not a terminal and no inherited secrets."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTOKEN_")}
    environ.pop("NO_COLOR", None)
    environ.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctoken",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def server() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer(
        "keliweb", client_secret=CLIENT_SECRET, users={"mario": PASSWORD}
    ) as srv:
        yield srv


def provider_args(server: FakeOAuthServer, store: Path, provider: str = "keliweb") -> list[str]:
    return [
        "--store",
        str(store),
        "--provider",
        provider,
        "--client-id",
        server.client_id,
        "--token-url",
        server.token_url,
    ]


async def stored(path: Path, key: str) -> Token | None:
    store = FileStore(path)
    try:
        return await store.get(key)
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------- general


async def test_version_and_help() -> None:
    version = await run_cli("--version")
    assert version.code == 0
    assert __version__ in version.out
    usage = await run_cli("--help")
    assert usage.code == 0
    for text in ("exit codes:", "ASYNCTOKEN_CLIENT_SECRET", "3  store error", "demo"):
        assert text in usage.out
    bad = await run_cli("status", "--store", "x.json", "--bogus")
    assert bad.code == 2
    assert "unrecognized arguments" in bad.err


async def test_demo_one_request_per_expiry() -> None:
    result = await run_cli("demo", "--workers", "200", "--seconds", "3", "--lifetime", "1")
    assert result.code == 0, result.out + result.err

    def number(label: str) -> int:
        match = re.search(rf"^\s*{label}\s+([\d,]+)", result.out, re.MULTILINE)
        assert match, f"{label!r} missing from:\n{result.out}"
        return int(match.group(1).replace(",", ""))

    expiries = number("expiries seen")
    assert expiries >= 2  # 3 s of 1 s tokens, renewed 25 % early
    # The first token + one per expiry (+ one refresh that may still be in flight at the end,
    # which the summary then says).
    late = 1 if "(+1 finished after the last call)" in result.out else 0
    assert number("token requests") == expiries + 1 + late
    assert number("refresh-token rotations") == expiries + 1 + late
    assert number("failed calls") == 0
    assert number("reuse detected by server") == 0
    assert number("calls served") > 1000
    assert "1.00 per expiry" in result.out
    assert re.search(r"get_token latency\s+p50 [\d.]+ (µs|ms)\s+p99 [\d.]+ (µs|ms)", result.out)
    assert "\033[" not in result.out  # no colours when not on a terminal
    assert "OK" in result.out


async def test_help_documents_every_exit_code() -> None:
    usage = await run_cli("status", "--help")
    assert usage.code == 0
    for code in ("0  success", "1  token", "2  usage", "3  store", "4  output", "5  unexpected"):
        assert code in usage.out


async def run_on_terminal(*args: str, term: str) -> tuple[int, bytes]:
    """Run ``python -m asynctoken ARGS`` with stdout and stderr on a pseudo-terminal."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCTOKEN_")}
    environ.pop("NO_COLOR", None)
    environ["TERM"] = term
    master, slave = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asynctoken",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=environ,
        )
    finally:
        os.close(slave)

    def read_all() -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    try:
        output = await asyncio.wait_for(asyncio.to_thread(read_all), 60)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        os.close(master)
    return code, output


@pytest.mark.parametrize(("term", "escapes"), [("dumb", False), ("xterm-256color", True)])
async def test_demo_uses_escape_sequences_only_on_a_capable_terminal(
    term: str, escapes: bool
) -> None:
    args = ("demo", "--workers", "20", "--seconds", "1", "--lifetime", "0.5")
    code, output = await run_on_terminal(*args, term=term)
    assert code == 0, output.decode(errors="replace")
    assert b"calls served" in output
    assert (b"\x1b[" in output) is escapes


# ------------------------------------------------------------------------------- status


@pytest.fixture
async def prepared_store(tmp_path: Path) -> tuple[Path, list[str]]:
    """A token file with a valid, an expired and a never-refreshed credential."""
    path = tmp_path / "tokens.json"
    now = time.time()
    secrets = [
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.valid-access-token",
        "def50200aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.expired-access-token",
        "def50200bbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "def50200cccccccccccccccccccccccccccc",
    ]
    tokens = {
        "keliweb-main": Token(
            access_token=secrets[0],
            expires_at=now + 42 * 60 + 20,
            refresh_token=secrets[1],
            provider="keliweb",
        ),
        "erpeasy-old": Token(
            access_token=secrets[2],
            expires_at=now - 3 * 3600 - 60,
            refresh_token=secrets[3],
            provider="erpeasy",
        ),
        "seeded": Token(
            access_token="", expires_at=0.0, refresh_token=secrets[4], provider="keliweb"
        ),
        "no-refresh": Token(
            access_token=secrets[0] + "x", expires_at=now + 7200, provider="oauth2"
        ),
    }
    store = FileStore(path)
    for key, token in tokens.items():
        await store.put(key, token)
    await store.aclose()
    return path, secrets


async def test_status_lists_credentials_in_human_terms(
    prepared_store: tuple[Path, list[str]],
) -> None:
    path, secrets = prepared_store
    result = await run_cli("status", "--store", str(path))
    assert result.code == 0, result.err
    result.assert_no_secrets(*secrets)
    lines = {line.split()[0]: line for line in result.out.splitlines() if line.strip()}
    assert "in 42 min" in lines["keliweb-main"]
    assert "def5…" in lines["keliweb-main"]
    assert "keliweb" in lines["keliweb-main"]
    assert "expired 3 h ago" in lines["erpeasy-old"]
    assert "never refreshed" in lines["seeded"]
    assert "in 2 h" in lines["no-refresh"]
    assert lines["no-refresh"].rstrip().endswith("no")
    assert "4 credentials in" in result.out


async def test_status_json(prepared_store: tuple[Path, list[str]]) -> None:
    path, secrets = prepared_store
    result = await run_cli("status", "--store", str(path), "--json")
    assert result.code == 0, result.err
    result.assert_no_secrets(*secrets)
    rows = {row["key"]: row for row in json.loads(result.out)}
    assert set(rows) == {"keliweb-main", "erpeasy-old", "seeded", "no-refresh"}
    assert rows["keliweb-main"]["state"] == "valid"
    assert 42 * 60 < rows["keliweb-main"]["expires_in"] <= 42 * 60 + 20
    assert rows["keliweb-main"]["refresh_token"] == "def5…"
    assert rows["erpeasy-old"]["state"] == "expired"
    assert rows["erpeasy-old"]["provider"] == "erpeasy"
    assert rows["seeded"]["state"] == "never_refreshed"
    assert rows["seeded"]["expires_at"] is None
    assert rows["no-refresh"]["has_refresh_token"] is False


async def test_status_of_an_empty_store_is_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    store = FileStore(path)
    await store.put("x", Token(access_token="", expires_at=0, refresh_token="r" * 20))
    await store.delete("x")
    await store.aclose()
    result = await run_cli("status", "--store", str(path), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == []


async def test_status_of_a_redis_store(redis_url: str, redis_prefix: str) -> None:
    from asynctoken import RedisStore

    secret = "def50200" + "e" * 40
    store = RedisStore(redis_url, prefix=redis_prefix)
    for i in range(3):
        await store.put(
            f"tenant-{i}",
            Token(access_token="", expires_at=0, refresh_token=secret, provider="keliweb"),
        )
    await store.aclose()
    result = await run_cli("status", "--store", redis_url, "--prefix", redis_prefix, "--json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert sorted(row["key"] for row in rows) == ["tenant-0", "tenant-1", "tenant-2"]
    assert {row["state"] for row in rows} == {"never_refreshed"}
    result.assert_no_secrets(secret)

    down = await run_cli("status", "--store", "redis://:hunter2-password@127.0.0.1:1/0")
    assert down.code == 3
    assert "hunter2-password" not in down.err
    assert down.out == ""


async def test_status_escapes_control_characters_from_the_store(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    key = "k\x1b[31mred\u202e"
    store = FileStore(path)
    await store.put(
        key,
        Token(
            access_token="a" * 20,
            expires_at=time.time() + 3600,
            refresh_token="\x1b[2J" + "r" * 20,
            provider="\x1b]0;title\x07",
            token_type="\x1b[5mBearer",
        ),
    )
    await store.aclose()
    text = await run_cli("status", "--store", str(path))
    assert text.code == 0, text.err
    assert "\x1b" not in text.out
    assert "\u202e" not in text.out
    assert "k\\x1b[31mred\\u202e" in text.out
    assert "\\x1b]0;title\\x07" in text.out
    assert "1 credential in" in text.out
    as_json = await run_cli("status", "--store", str(path), "--json")
    assert as_json.code == 0, as_json.err
    assert "\x1b" not in as_json.out
    [row] = json.loads(as_json.out)
    assert row["key"] == key  # JSON escapes, and keeps the exact value
    assert row["token_type"] == "\x1b[5mBearer"


async def test_status_lists_many_keys_in_batches(redis_url: str, redis_prefix: str) -> None:
    from asynctoken import RedisStore

    store = RedisStore(redis_url, prefix=redis_prefix, scan_count=7)
    keys = [f"tenant-{i:03d}" for i in range(250)]
    for key in keys:
        await store.put(key, Token(access_token="", expires_at=0, provider="keliweb"))
    await store.delete("tenant-100")
    await store.aclose()
    as_json = await run_cli("status", "--store", redis_url, "--prefix", redis_prefix, "--json")
    assert as_json.code == 0, as_json.err
    assert sorted(row["key"] for row in json.loads(as_json.out)) == sorted(
        k for k in keys if k != "tenant-100"
    )
    text = await run_cli("status", "--store", redis_url, "--prefix", redis_prefix)
    assert text.code == 0, text.err
    assert text.out.count("tenant-") == 249
    assert "249 credentials in redis://" in text.out


async def test_status_takes_a_redis_url_in_any_case(redis_url: str, redis_prefix: str) -> None:
    upper = "REDIS" + redis_url[len("redis") :]
    result = await run_cli("status", "--store", upper, "--prefix", redis_prefix, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == []


@pytest.fixture
def redis_with_password() -> Iterator[tuple[RedisServer, str]]:
    password = "hunter2-redis-password-0123456789"
    server = RedisServer(extra_args=["--requirepass", password])
    server.start()
    try:
        yield server, password
    finally:
        server.stop()


async def test_cli_status_hides_a_redis_password_given_as_query(
    redis_with_password: tuple[RedisServer, str],
) -> None:
    """Regression: redis-py takes the password from ``?password=``; RedisStore redacts it, the
    CLI's own store label (footer of status, add, refresh) did not."""
    server, password = redis_with_password
    url = f"redis://127.0.0.1:{server.port}/0?password={password}"
    result = await run_cli("status", "--store", url, "--no-color")
    code, out, err = result.code, result.out, result.err
    assert code == 0, err
    assert "0 credentials in" in out
    assert password not in out
    assert password not in err


async def test_cli_status_json_lists_a_redis_store_under_a_query_password(
    redis_with_password: tuple[RedisServer, str],
) -> None:
    """Same store, --json: works and prints nothing secret (control for the test above)."""
    server, password = redis_with_password
    url = f"redis://127.0.0.1:{server.port}/0?password={password}"
    result = await run_cli("status", "--store", url, "--json")
    code, out, err = result.code, result.out, result.err
    assert code == 0, err
    assert json.loads(out) == []
    assert password not in out + err


# ------------------------------------------------------------------------------- add, refresh


async def test_add_then_refresh(server: FakeOAuthServer, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    seed = server.issue_refresh_token()
    env = {"ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET, "ASYNCTOKEN_REFRESH_TOKEN": seed}

    added = await run_cli("add", "kw", *provider_args(server, path), env=env)
    assert added.code == 0, added.err
    assert server.token_requests == 1
    first = await stored(path, "kw")
    assert first is not None
    assert first.access_token
    assert first.refresh_token
    assert server.valid_refresh_tokens == [first.refresh_token]  # the seed was rotated, saved
    assert "in 60 min" in added.out
    added.assert_no_secrets(CLIENT_SECRET, seed, first.access_token, first.refresh_token)

    refreshed = await run_cli("refresh", "kw", *provider_args(server, path), env=env)
    assert refreshed.code == 0, refreshed.err
    assert server.token_requests == 2
    second = await stored(path, "kw")
    assert second is not None
    assert second.refresh_token != first.refresh_token
    assert server.valid_refresh_tokens == [second.refresh_token]
    assert server.requests[1].refresh_token == first.refresh_token
    assert "expires in 60 min" in refreshed.out
    refreshed.assert_no_secrets(
        CLIENT_SECRET, seed, first.access_token, second.access_token, second.refresh_token
    )

    again = await run_cli("add", "kw", *provider_args(server, path), env=env)
    assert again.code == 2
    assert "already holds a credential named 'kw'" in again.err
    assert "--overwrite" in again.err
    assert server.token_requests == 2  # refused before any request
    assert (await stored(path, "kw")) == second

    status = await run_cli("status", "--store", str(path))
    assert status.code == 0
    assert "kw" in status.out
    assert "in 60 min" in status.out
    status.assert_no_secrets(second.access_token, second.refresh_token)


async def test_add_and_refresh_succeed_with_a_huge_expires_in(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    """The work succeeded: the command must say so. (A huge expires_in overflowed the expiry
    display: "unexpected error", and a script retried with an already-used refresh token.)"""
    path = tmp_path / "tokens.json"
    env = {
        "ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET,
        "ASYNCTOKEN_REFRESH_TOKEN": server.issue_refresh_token(),
    }
    huge = 9223372036854775807
    server.rewrite_next(lambda a: a.with_json({**a.json(), "expires_in": huge}), 2)
    added = await run_cli("add", "kw", *provider_args(server, path), env=env)
    assert added.code == 0, added.err
    refreshed = await run_cli("refresh", "kw", *provider_args(server, path), env=env)
    assert refreshed.code == 0, refreshed.err
    token = await stored(path, "kw")
    assert token is not None
    assert server.valid_refresh_tokens == [token.refresh_token]


async def test_status_shows_a_far_future_expiry_of_an_old_record(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    await FileStore(path).put(
        "old", Token(access_token="a" * 20, expires_at=9.2e18, refresh_token="r" * 20)
    )
    result = await run_cli("status", "--store", str(path))
    assert result.code == 0, result.err
    assert "old" in result.out


async def test_status_lists_healthy_records_and_flags_damaged_ones(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = FileStore(path)
    for key in ("alpha", "omega"):
        await store.put(
            key, Token(access_token="a" * 20, expires_at=time.time() + 3600, provider="keliweb")
        )
    document = json.loads(path.read_text())
    document["credentials"]["broken"] = {"access_token": "x", "refresh_token": "secret-" * 5}
    path.write_text(json.dumps(document))

    result = await run_cli("status", "--store", str(path))
    assert result.code == 3, result.err
    lines = {line.split()[0]: line for line in result.out.splitlines() if line.strip()}
    assert "in 60 min" in lines["alpha"]
    assert "in 60 min" in lines["omega"]
    assert "damaged" in lines["broken"]
    assert "expires_at" in lines["broken"]
    assert "3 credentials in" in result.out
    assert "1 damaged" in result.out
    result.assert_no_secrets("secret-" * 5)

    as_json = await run_cli("status", "--store", str(path), "--json")
    assert as_json.code == 3
    rows = {row["key"]: row for row in json.loads(as_json.out)}
    assert rows["broken"]["state"] == "damaged"
    assert rows["alpha"]["state"] == "valid"


async def test_add_with_password_grant_and_overwrite(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    env = {"ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET, "ASYNCTOKEN_PASSWORD": PASSWORD}
    args = ["add", "kw", *provider_args(server, path), "--username", "mario"]
    first = await run_cli(*args, env=env)
    assert first.code == 0, first.err
    assert server.requests[0].grant_type == "password"
    assert server.requests[0].username == "mario"
    token = await stored(path, "kw")
    assert token is not None

    replaced = await run_cli(*args, "--overwrite", env=env)
    assert replaced.code == 0, replaced.err
    new = await stored(path, "kw")
    assert new is not None
    assert new.refresh_token != token.refresh_token
    for result in (first, replaced):
        result.assert_no_secrets(CLIENT_SECRET, PASSWORD, token.refresh_token, new.refresh_token)


async def test_add_erpeasy_password_grant(tmp_path: Path) -> None:
    async with FakeOAuthServer(
        "erpeasy", client_secret=CLIENT_SECRET, users={"ana@example.com.br": PASSWORD}
    ) as server:
        path = tmp_path / "tokens.json"
        env = {"ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET, "ASYNCTOKEN_PASSWORD": PASSWORD}
        args = provider_args(server, path, "erpeasy")
        result = await run_cli(
            "add",
            "erp",
            *args,
            "--email",
            "ana@example.com.br",
            "--company",
            "11222333000181",
            env=env,
        )
        assert result.code == 0, result.err
        token = await stored(path, "erp")
        assert token is not None
        assert token.refresh_token
        assert token.provider == "erpeasy"
        assert token.extra["company_id"] == 1234
        result.assert_no_secrets(CLIENT_SECRET, PASSWORD, token.refresh_token)

        partial = await run_cli("add", "erp2", *args, "--email", "a@b.c", env=env)
        assert partial.code == 2
        assert "--email and --company" in partial.err


# ------------------------------------------------------------------------------- errors


async def test_missing_store_file(tmp_path: Path) -> None:
    result = await run_cli("status", "--store", str(tmp_path / "nope.json"))
    assert result.code == 3
    assert "store file not found" in result.err
    assert "Traceback" not in result.err


async def test_corrupt_store_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"this is": "not a token file"')
    result = await run_cli("status", "--store", str(path))
    assert result.code == 3
    assert str(path) in result.err
    assert "not a usable asynctoken token file" in result.err
    assert "Traceback" not in result.err


async def test_missing_secret_without_a_terminal(server: FakeOAuthServer, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    result = await run_cli("add", "kw", *provider_args(server, path))
    assert result.code == 2
    assert "ASYNCTOKEN_REFRESH_TOKEN" in result.err
    assert "never accepted as arguments" in result.err
    result = await run_cli(
        "add", "kw", *provider_args(server, path), env={"ASYNCTOKEN_REFRESH_TOKEN": "r" * 20}
    )
    assert result.code == 2
    assert "ASYNCTOKEN_CLIENT_SECRET" in result.err
    assert server.token_requests == 0
    assert not path.exists()


async def test_invalid_grant(server: FakeOAuthServer, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    dead = "def50200" + "d" * 40
    env = {"ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET, "ASYNCTOKEN_REFRESH_TOKEN": dead}

    added = await run_cli("add", "kw", *provider_args(server, path), env=env)
    assert added.code == 1
    assert "InvalidGrantError" in added.err
    assert (await stored(path, "kw")) is None  # a rejected seed is never stored
    added.assert_no_secrets(CLIENT_SECRET, dead)

    store = FileStore(path)
    await store.put("kw", Token(access_token="", expires_at=0, refresh_token=dead))
    await store.aclose()
    refreshed = await run_cli("refresh", "kw", *provider_args(server, path), env=env)
    assert refreshed.code == 1
    assert "InvalidGrantError" in refreshed.err
    assert "Traceback" not in refreshed.err
    refreshed.assert_no_secrets(CLIENT_SECRET, dead)
    assert server.token_requests == 2

    unknown = await run_cli("refresh", "other", *provider_args(server, path), env=env)
    assert unknown.code == 1
    assert "no credential named 'other'" in unknown.err


async def test_cli_bad_idna_token_url_is_a_usage_error(tmp_path: os.PathLike[str]) -> None:
    result = await run_cli(
        "add",
        "x",
        "--store",
        os.path.join(tmp_path, "t.json"),
        "--provider",
        "oauth2",
        "--client-id",
        "c",
        "--token-url",
        "https://xn--a-/oauth/token",
        env={"ASYNCTOKEN_CLIENT_SECRET": "s" * 20, "ASYNCTOKEN_REFRESH_TOKEN": "r" * 20},
    )
    code, _out, err = result.code, result.out, result.err
    assert "Traceback" not in err
    assert code == 2


@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
async def test_cli_unwritable_stdout_is_reported_without_traceback(
    tmp_path: os.PathLike[str], redirect: str
) -> None:
    path = os.path.join(tmp_path, "t.json")
    store = FileStore(path)
    await store.put("k", Token(access_token="a" * 20, expires_at=2e9, refresh_token="r" * 20))
    await store.aclose()
    process = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m asynctoken status --store {path} {redirect}",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert b"Traceback" not in err, err.decode()[-400:]
    assert process.returncode != 1  # 1 means "token or endpoint error"


@pytest.mark.parametrize(
    ("redirect", "message"),
    [(">&-", "standard output is closed"), (">/dev/full", "No space left on device")],
)
async def test_unwritable_stdout_has_its_own_exit_code(
    tmp_path: Path, redirect: str, message: str
) -> None:
    path = tmp_path / "t.json"
    store = FileStore(path)
    await store.put("k", Token(access_token="a" * 20, expires_at=2e9, refresh_token="r" * 20))
    await store.aclose()
    process = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m asynctoken status --store {path} {redirect}",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    lines = err.decode().splitlines()
    assert process.returncode == 4
    assert len(lines) == 1, lines
    assert lines[0].startswith("asynctoken: error: ")
    assert message in lines[0]


async def test_a_closed_reader_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = FileStore(path)
    await store.put("k", Token(access_token="a" * 20, expires_at=2e9))
    await store.aclose()
    read, write = os.pipe()
    os.close(read)  # `asynctoken status | head -0`
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asynctoken",
            "status",
            "--store",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert err == b""


_CRASH = """
import sys
import asynctoken.cli as cli

async def crash(*_args):
    raise RuntimeError("do-not-print-this-0123456789")

cli.cmd_status = crash
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
async def test_unexpected_error_is_one_line_unless_verbose(tmp_path: Path, verbose: bool) -> None:
    path = tmp_path / "t.json"
    path.write_text("{}")
    args = ["status", "--store", str(path), *(["-v"] if verbose else [])]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASH,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    text = err.decode()
    assert process.returncode == 5
    assert out == b""
    assert text.splitlines()[-1] == (
        "asynctoken: error: unexpected RuntimeError; run with -v for the traceback"
    )
    if verbose:
        assert "Traceback" in text
    else:
        assert len(text.splitlines()) == 1
        assert "do-not-print-this" not in text


# ------------------------------------------------------------------------------- demo verdict


def _requests(*spec: tuple[float, str, str]) -> list[Any]:
    """Token-request records: (arrival loop time, access token issued, outcome)."""
    return [
        SimpleNamespace(
            loop_time=at,
            outcome=outcome,
            issued_access_token=access,
            refresh_token=f"rt{i}",
            issued_refresh_token=f"rt{i + 1}",
        )
        for i, (at, access, outcome) in enumerate(spec)
    ]


def _stats(*served: str) -> _DemoStats:
    stats = _DemoStats(calls=1000)
    stats.served = dict.fromkeys(served, 0.0)
    return stats


def test_demo_verdict_accepts_one_request_per_expiry() -> None:
    requests = _requests((0.0, "a", "ok"), (0.76, "b", "ok"), (1.52, "c", "ok"), (2.3, "d", "ok"))
    summary = _summarize(_stats("a", "b", "c"), requests, 0, lifetime=1.0)
    assert summary.ok, summary.problems
    assert summary.unused_last  # "d" arrived after the last call
    assert summary.expiries == 2


@pytest.mark.parametrize(
    ("requests", "stats", "reuse", "problem"),
    [
        # two requests for one expiry, both tokens used
        (
            _requests((0.0, "a", "ok"), (0.75, "b", "ok"), (0.76, "c", "ok")),
            _stats("a", "b", "c"),
            0,
            "apart",
        ),
        # a wasted request in the middle
        (
            _requests((0.0, "a", "ok"), (0.75, "b", "ok"), (1.5, "c", "ok")),
            _stats("a", "c"),
            0,
            "never used",
        ),
        (_requests((0.0, "a", "ok"), (0.75, "b", "reused")), _stats("a"), 1, "reuse"),
        (_requests((0.0, "a", "ok")), _DemoStats(failures=3), 0, "failed"),
    ],
)
def test_demo_verdict_catches_broken_invariants(
    requests: list[Any], stats: _DemoStats, reuse: int, problem: str
) -> None:
    summary = _summarize(stats, requests, reuse, lifetime=1.0)
    assert not summary.ok
    assert any(problem in text for text in summary.problems), summary.problems
