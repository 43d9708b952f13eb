"""The ``asynctoken`` command: ``python -m asynctoken [demo|status|add|refresh]``.

``demo`` (the default) needs no network and no configuration; the other commands work on a store
(a JSON file, or a ``redis://`` URL). Secrets are never taken from the command line, where
``ps`` and shell history would keep them: they come from environment variables or, on a
terminal, a ``getpass`` prompt. Nothing printed ever contains a secret beyond a short prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import io
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from ._errors import ConfigurationError, StoreError, TokenError
from ._manager import TokenManager
from ._secrets import mask
from ._token import Token
from .providers import ERPeasyProvider, KeliwebProvider, OAuth2Provider, Provider
from .stores._base import TokenStore

if TYPE_CHECKING:
    from .testing import TokenRequest

__all__ = ["main"]

EXIT_OK = 0
EXIT_TOKEN = 1
EXIT_USAGE = 2
EXIT_STORE = 3

ENV_CLIENT_SECRET = "ASYNCTOKEN_CLIENT_SECRET"
ENV_REFRESH_TOKEN = "ASYNCTOKEN_REFRESH_TOKEN"
ENV_PASSWORD = "ASYNCTOKEN_PASSWORD"

_EPILOG = f"""\
secrets (never command-line arguments):
  {ENV_CLIENT_SECRET}   the OAuth2 client secret
  {ENV_REFRESH_TOKEN}   the refresh token to bootstrap a credential with (add)
  {ENV_PASSWORD}        the password for the password grant (add)
  When a variable is unset and stdin is a terminal, you are prompted without echo.

exit codes:
  0  success
  1  token or endpoint error (rejected refresh token or client, endpoint unreachable,
     unknown credential, or the demo's invariant broken)
  2  usage error (bad arguments, missing secret, credential already exists)
  3  store error (missing or corrupt store file, Redis unreachable)

Colours are used on a terminal only, and never when NO_COLOR is set.
"""


class CliError(Exception):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------- output helpers


class Style:
    """ANSI colours, or nothing: colours only on a terminal and never with ``NO_COLOR``."""

    __slots__ = ("enabled",)

    def __init__(self, stream: TextIO, *, no_color: bool = False) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = (
            not no_color
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb"
            and callable(isatty)
            and bool(isatty())
        )

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)


def human_delta(seconds: float) -> str:
    """``"in 42 min"`` for a future expiry, ``"expired 3 h ago"`` for a past one."""
    amount = abs(seconds)
    if amount < 90:
        text = f"{amount:.0f} s"
    elif amount < 90 * 60:
        text = f"{amount / 60:.0f} min"
    elif amount < 48 * 3600:
        text = f"{amount / 3600:.0f} h"
    else:
        text = f"{amount / 86400:.0f} d"
    return f"in {text}" if seconds >= 0 else f"expired {text} ago"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# --------------------------------------------------------------------------- secrets and stores


def read_secret(env: str, what: str) -> str:
    """Read a secret from ``env``, else prompt for it on a terminal; never from argv.

    Raises:
        CliError: neither is available (exit code 2).
    """
    value = os.environ.get(env)
    if value:
        return value
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            value = getpass.getpass(f"{what}: ")
        except EOFError:
            value = ""
        if value:
            return value
        raise CliError(f"no {what} entered", EXIT_USAGE)
    raise CliError(
        f"no {what}: set {env} in the environment, or run in a terminal to be prompted "
        "(secrets are never accepted as arguments)",
        EXIT_USAGE,
    )


def _is_redis_url(target: str) -> bool:
    return target.startswith(("redis://", "rediss://", "unix://"))


def _store_label(target: str) -> str:
    """The store argument as it may be printed: a Redis URL without its password."""
    if not _is_redis_url(target):
        return target
    from yarl import URL

    url = URL(target)
    return str(url.with_password(None)) if url.password is not None else target


def open_store(args: argparse.Namespace, *, must_exist: bool) -> TokenStore:
    """Open ``--store``: a ``redis://`` or ``rediss://`` URL, else a JSON file path.

    Raises:
        CliError: the file does not exist although it must (exit code 3).
    """
    target: str = args.store
    if _is_redis_url(target):
        try:
            from .stores import RedisStore
        except ImportError as exc:  # the redis extra is not installed
            raise CliError(
                f"cannot open a Redis store: {exc}; install asynctoken[redis]", EXIT_STORE
            ) from exc
        if args.prefix is None:
            return RedisStore(target)
        return RedisStore(target, prefix=args.prefix)
    if args.prefix is not None:
        raise CliError("--prefix applies to Redis stores only", EXIT_USAGE)
    if must_exist and not os.path.exists(target):
        raise CliError(f"store file not found: {target}", EXIT_STORE)
    if os.path.isdir(target):
        raise CliError(f"store path is a directory, not a file: {target}", EXIT_STORE)
    from .stores import FileStore

    return FileStore(target)


def _check_provider_args(args: argparse.Namespace) -> None:
    """Usage errors that must surface before any prompt for a secret."""
    if args.provider == "oauth2" and args.token_url is None:
        raise CliError("--token-url is required with --provider oauth2", EXIT_USAGE)


def build_provider(args: argparse.Namespace, *, password_grant: bool) -> Provider:
    """The provider named by ``--provider``, with the client secret from env or a prompt."""
    name: str = args.provider
    token_url: str | None = args.token_url
    _check_provider_args(args)
    secret = read_secret(ENV_CLIENT_SECRET, "client secret")
    password = read_secret(ENV_PASSWORD, "password") if password_grant else None
    url_kw: dict[str, Any] = {} if token_url is None else {"token_url": token_url}
    if name == "keliweb":
        username = getattr(args, "username", None) if password_grant else None
        return KeliwebProvider(args.client_id, secret, username, password, **url_kw)
    if name == "erpeasy":
        if password_grant:
            return ERPeasyProvider(
                args.client_id, secret, args.email, password, args.company, **url_kw
            )
        return ERPeasyProvider(args.client_id, secret, **url_kw)
    assert token_url is not None
    if password_grant:
        return OAuth2Provider(
            token_url, args.client_id, secret, username=args.username, password=password
        )
    return OAuth2Provider(token_url, args.client_id, secret)


def _token_line(token: Token, style: Style) -> str:
    remaining = token.expires_at - time.time()
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(token.expires_at))
    expiry = human_delta(remaining)
    expiry = style.green(expiry) if remaining > 0 else style.red(expiry)
    refresh = mask(token.refresh_token) if token.refresh_token else "none"
    return (
        f"  access token   {mask(token.access_token)}  expires {expiry} ({when})\n"
        f"  refresh token  {refresh}"
    )


# --------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    provider: str | None
    state: str  # "valid", "expired", "never_refreshed"
    expires_at: float | None
    refresh_token: str | None
    token_type: str
    scope: str | None
    access_token: str

    @classmethod
    def of(cls, key: str, token: Token, now: float) -> _Row:
        if not token.access_token:
            state, expires_at = "never_refreshed", None
        else:
            expires_at = token.expires_at
            state = "valid" if expires_at > now else "expired"
        return cls(
            key=key,
            provider=token.provider,
            state=state,
            expires_at=expires_at,
            refresh_token=token.refresh_token,
            token_type=token.token_type,
            scope=token.scope,
            access_token=token.access_token,
        )

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "key": self.key,
            "provider": self.provider,
            "state": self.state,
            "expires_at": self.expires_at,
            "expires_in": None if self.expires_at is None else round(self.expires_at - now, 3),
            "token_type": self.token_type,
            "scope": self.scope,
            "access_token": mask(self.access_token) if self.access_token else None,
            "has_refresh_token": bool(self.refresh_token),
            "refresh_token": mask(self.refresh_token) if self.refresh_token else None,
        }

    def as_text(self, now: float, style: Style, key_width: int) -> str:
        if self.expires_at is None:
            expiry = style.yellow(f"{'never refreshed':<20}")
        else:
            remaining = self.expires_at - now
            text = f"{human_delta(remaining):<20}"
            expiry = (
                style.green(text)
                if remaining > 300
                else (style.yellow(text) if remaining > 0 else style.red(text))
            )
        refresh = f"yes ({mask(self.refresh_token)})" if self.refresh_token else style.red("no")
        return f"{self.key:<{key_width}}  {self.provider or '?':<9}  {expiry}  {refresh}"


async def cmd_status(args: argparse.Namespace, style: Style, out: TextIO) -> int:
    """List the credentials of a store, one record in memory at a time."""
    store = open_store(args, must_exist=True)
    label = _store_label(args.store)
    key_width = 24
    seen: set[str] = set()  # Redis SCAN may yield a key twice
    header = f"{'KEY':<{key_width}}  {'PROVIDER':<9}  {'ACCESS TOKEN':<20}  REFRESH TOKEN"
    try:
        async for key in store.keys():
            if key in seen:
                continue
            token = await store.get(key)
            if token is None:  # deleted while we iterate
                continue
            now = time.time()
            row = _Row.of(key, token, now)
            # Nothing is printed before the first record: a failing store prints only an error.
            if args.json:
                out.write(("[\n  " if not seen else ",\n  ") + json.dumps(row.as_json(now)))
            else:
                if not seen:
                    out.write(style.bold(header) + "\n")
                out.write(row.as_text(now, style, key_width) + "\n")
            seen.add(key)
            out.flush()
        if args.json:
            out.write("\n]\n" if seen else "[]\n")
        else:
            plural = "" if len(seen) == 1 else "s"
            out.write(style.dim(f"{len(seen)} credential{plural} in {label}") + "\n")
    finally:
        await store.aclose()
    return EXIT_OK


# --------------------------------------------------------------------------- add and refresh


def _wants_password_grant(args: argparse.Namespace) -> bool:
    if args.provider == "erpeasy":
        given = [args.email is not None, args.company is not None]
        if any(given) and not all(given):
            raise CliError("ERPeasy's password grant needs both --email and --company", EXIT_USAGE)
        if args.username is not None:
            raise CliError("use --email and --company with --provider erpeasy", EXIT_USAGE)
        return all(given)
    if args.email is not None or args.company is not None:
        raise CliError("--email and --company apply to --provider erpeasy only", EXIT_USAGE)
    return args.username is not None


async def cmd_add(args: argparse.Namespace, style: Style, out: TextIO) -> int:
    """Bootstrap a credential from a refresh token or the password grant and store it.

    The first token is fetched through a throw-away in-memory manager and only then written to
    the store, so a rejected refresh token or password never replaces a working credential.
    """
    password_grant = _wants_password_grant(args)
    _check_provider_args(args)
    store = open_store(args, must_exist=False)
    name: str = args.name
    try:
        if await store.get(name) is not None and not args.overwrite:
            raise CliError(
                f"the store already holds a credential named {name!r}; pass --overwrite to "
                "replace it",
                EXIT_USAGE,
            )
        refresh_token = None
        if not password_grant:
            refresh_token = read_secret(ENV_REFRESH_TOKEN, "refresh token")
        provider = build_provider(args, password_grant=password_grant)
        async with TokenManager() as bootstrap:
            await bootstrap.add(name, provider, refresh_token=refresh_token)
            token = await bootstrap.refresh(name)
        try:
            async with store.lock(name, timeout=60.0):
                if args.overwrite:
                    await store.put(name, token)
                elif not await store.put_if_absent(name, token):
                    raise CliError(
                        f"a credential named {name!r} appeared in the store meanwhile and was "
                        "kept; the token just obtained is discarded",
                        EXIT_USAGE,
                    )
        except StoreError as exc:
            lost = "" if password_grant else "; the refresh token given was used up by the server"
            raise CliError(
                f"store: {exc}. The new token could not be saved{lost}", EXIT_STORE
            ) from exc
    finally:
        await store.aclose()
    grant = "password grant" if password_grant else "refresh token"
    out.write(f"{style.green('added')} {name!r} to {_store_label(args.store)} ({grant})\n")
    out.write(_token_line(token, style) + "\n")
    if not token.refresh_token:
        out.write(style.yellow("warning: the endpoint issued no refresh token") + "\n")
    return EXIT_OK


async def cmd_refresh(args: argparse.Namespace, style: Style, out: TextIO) -> int:
    """Force one refresh of a stored credential through the given provider."""
    _check_provider_args(args)
    store = open_store(args, must_exist=True)
    name: str = args.name
    async with TokenManager(store=store) as manager:  # closes the store
        stored = await store.get(name)
        if stored is None:
            raise CliError(
                f"no credential named {name!r} in {_store_label(args.store)}; create it with "
                "'asynctoken add'",
                EXIT_TOKEN,
            )
        if stored.provider is not None and stored.provider != args.provider:
            raise CliError(
                f"credential {name!r} was issued by {stored.provider!r}, not {args.provider!r}",
                EXIT_USAGE,
            )
        provider = build_provider(args, password_grant=False)
        await manager.add(name, provider)
        token = await manager.refresh(name)
    out.write(f"{style.green('refreshed')} {name!r} in {_store_label(args.store)}\n")
    out.write(_token_line(token, style) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------- demo


@dataclass
class _DemoStats:
    """What the demo's workers measured."""

    calls: int = 0
    failures: int = 0
    expired_served: int = 0
    max_latency: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)  # see _bucket
    served: dict[str, float] = field(default_factory=dict)  # access token -> first seen
    errors: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of get_token latency, in seconds (within 1/16)."""
        total = sum(self.buckets.values())
        rank = math.ceil(q * total)
        seen = 0
        for nanos in sorted(self.buckets):
            seen += self.buckets[nanos]
            if seen >= rank:
                return nanos / 1e9
        return 0.0


def _bucket(nanos: int) -> int:
    """Round down to 4 significant bits: a histogram of 1/16 relative precision, few keys."""
    shift = max(nanos.bit_length() - 4, 0)
    return (nanos >> shift) << shift


async def cmd_demo(args: argparse.Namespace, style: Style, out: TextIO) -> int:
    """Thousands of coroutines, a short-lived rotating credential, one request per expiry."""
    from .testing import FakeOAuthServer

    workers: int = args.workers
    seconds: float = args.seconds
    lifetime: float = args.lifetime
    out.write(
        style.bold("asynctoken demo") + f": {_count(workers)} coroutines call get_token() for "
        f"{seconds:g} s against an in-process fake Keliweb server.\n"
        f"Access tokens live {lifetime:g} s; every refresh rotates the refresh token and reusing "
        "an old one would revoke everything.\n\n"
    )
    out.flush()
    stats = _DemoStats()
    running = True
    key = "demo"

    async with FakeOAuthServer(
        "keliweb", expires_in=lifetime, rotate=True, revoke_family_on_reuse=True
    ) as server:
        provider = KeliwebProvider(
            server.client_id, server.client_secret, token_url=server.token_url
        )
        async with TokenManager() as manager:
            await manager.add(key, provider, refresh_token=server.issue_refresh_token())

            async def worker() -> None:
                get_token = manager.get_token
                clock = time.perf_counter
                wall = time.time
                buckets = stats.buckets
                served = stats.served
                while running:
                    started = clock()
                    try:
                        token = await get_token(key)
                    except TokenError as exc:
                        stats.failures += 1
                        name = type(exc).__name__
                        stats.errors[name] = stats.errors.get(name, 0) + 1
                        await asyncio.sleep(0.01)
                        continue
                    elapsed = clock() - started
                    stats.calls += 1
                    if token.expires_at <= wall():
                        stats.expired_served += 1
                    if token.access_token not in served:
                        served[token.access_token] = wall()
                    nanos = _bucket(int(elapsed * 1e9))
                    buckets[nanos] = buckets.get(nanos, 0) + 1
                    if elapsed > stats.max_latency:
                        stats.max_latency = elapsed
                    await asyncio.sleep(0)

            progress = _Progress(sys.stderr)
            began = time.monotonic()
            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            try:
                while (elapsed := time.monotonic() - began) < seconds:
                    progress.update(elapsed, seconds, stats, server.token_requests)
                    await asyncio.sleep(min(progress.interval, max(seconds - elapsed, 0.0)))
            finally:
                running = False
                await asyncio.gather(*tasks, return_exceptions=True)
                progress.done()
            duration = time.monotonic() - began
        # the manager is closed: any refresh still in flight has finished and been counted
        summary = _summarize(stats, server.requests, server.reuse_detected, lifetime)

    return _print_summary(summary, stats, duration, workers, style, out)


class _Progress:
    """A live status line on a terminal (stderr), plain periodic lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        isatty = getattr(stream, "isatty", None)
        self._tty = callable(isatty) and bool(isatty())
        self.interval = 0.2 if self._tty else 1.0
        self._last_calls = 0
        self._last_time = time.monotonic()

    def update(self, elapsed: float, total: float, stats: _DemoStats, requests: int) -> None:
        now = time.monotonic()
        rate = (stats.calls - self._last_calls) / max(now - self._last_time, 1e-9)
        self._last_calls, self._last_time = stats.calls, now
        line = (
            f"{elapsed:5.1f}/{total:g} s  calls {_count(stats.calls):>11}  "
            f"({rate / 1e3:,.0f} k/s)  token requests {requests}  failed {stats.failures}"
        )
        if self._tty:
            self._stream.write("\r\033[2K" + line)
        elif stats.calls:
            self._stream.write(line + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty:
            self._stream.write("\r\033[2K")
            self._stream.flush()


@dataclass(frozen=True, slots=True)
class _Summary:
    token_requests: int
    unused_last: bool
    expiries: int
    rotations: int
    reuse_detected: int
    ok: bool
    problems: list[str]


def _summarize(
    stats: _DemoStats, requests: Sequence[TokenRequest], reuse_detected: int, lifetime: float
) -> _Summary:
    """Check the invariant: one token request per expiry, no failure, no reuse."""
    problems: list[str] = []
    failed = [r for r in requests if r.outcome != "ok"]
    rotations = sum(
        1
        for r in requests
        if r.outcome == "ok"
        and r.issued_refresh_token
        and r.issued_refresh_token != r.refresh_token
    )
    # Tokens the workers saw change: each change is one expiry that needed a new token.
    expiries = max(len(stats.served) - 1, 0)
    issued = [r.issued_access_token for r in requests if r.outcome == "ok"]
    # A refresh that was still in flight when the workers stopped is the only allowed unused one.
    unused = [t for t in issued if t not in stats.served]
    unused_last = bool(unused) and unused == issued[-1:]
    gaps = [b.loop_time - a.loop_time for a, b in itertools.pairwise(requests)]
    min_gap = min(gaps) if gaps else None
    if stats.failures:
        problems.append(f"{stats.failures} get_token call(s) failed")
    if stats.expired_served:
        problems.append(f"{stats.expired_served} call(s) got an already expired token")
    if failed:
        problems.append(f"{len(failed)} token request(s) failed at the server")
    if reuse_detected:
        problems.append(f"the server detected {reuse_detected} refresh-token reuse(s)")
    if unused and not unused_last:
        problems.append(f"{len(unused)} token(s) were requested but never used")
    if len(requests) - (1 if unused_last else 0) != expiries + 1:
        problems.append("token requests do not match one initial request plus one per expiry")
    if min_gap is not None and min_gap < lifetime / 2:
        problems.append(f"two token requests only {_duration(min_gap)} apart (one expiry)")
    return _Summary(
        token_requests=len(requests),
        unused_last=unused_last,
        expiries=expiries,
        rotations=rotations,
        reuse_detected=reuse_detected,
        ok=not problems,
        problems=problems,
    )


def _print_summary(
    summary: _Summary,
    stats: _DemoStats,
    duration: float,
    workers: int,
    style: Style,
    out: TextIO,
) -> int:
    def mark(good: bool) -> str:
        return style.green("✓") if good else style.red("✗")

    renewals = summary.token_requests - 1
    per_expiry = (
        f"{(renewals - summary.unused_last) / summary.expiries:.2f} per expiry"
        if summary.expiries
        else "no expiry yet"
    )
    extra = " (+1 finished after the last call)" if summary.unused_last else ""
    calls_ok = stats.failures == 0 and not stats.expired_served
    rate = f"{stats.calls / duration / 1e6:.2f} M/s from {_count(workers)} coroutines"
    latency = f"p99 {_duration(stats.percentile(0.99))} · max {_duration(stats.max_latency)}"
    rows = [
        ("calls served", _count(stats.calls), style.dim(f"{rate} in {duration:.1f} s")),
        ("failed calls", _count(stats.failures), mark(calls_ok)),
        (
            "token requests",
            _count(summary.token_requests),
            style.dim(f"1 initial + {renewals} refreshes{extra}"),
        ),
        ("expiries seen", _count(summary.expiries), f"{per_expiry} {mark(summary.ok)}"),
        ("get_token latency", f"p50 {_duration(stats.percentile(0.5))}", style.dim(latency)),
        (
            "refresh-token rotations",
            _count(summary.rotations),
            style.dim("each new refresh token saved before use"),
        ),
        (
            "reuse detected by server",
            _count(summary.reuse_detected),
            mark(summary.reuse_detected == 0),
        ),
    ]
    for label, value, note in rows:
        out.write(f"  {label:<25} {value:>12}   {note}\n")
    out.write("\n")
    if summary.ok:
        out.write(
            style.green("OK") + ": every expiry caused exactly one token request, and no "
            "call failed.\n"
        )
        return EXIT_OK
    out.write(style.red("FAILED") + ": " + "; ".join(summary.problems) + "\n")
    if stats.errors:
        out.write(f"  errors: {stats.errors}\n")
    return EXIT_TOKEN


# --------------------------------------------------------------------------- argument parsing


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps the layout of multi-line text (the epilog)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asynctoken`` command."""
    formatter = _Formatter
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--no-color", action="store_true", help="never use colours")
    common.add_argument("-v", "--verbose", action="store_true", help="log what asynctoken does")

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        required=True,
        metavar="PATH|URL",
        help="a JSON token file, or a redis:// or rediss:// URL",
    )
    store.add_argument("--prefix", help="key prefix of a Redis store (default: asynctoken:)")

    provider = argparse.ArgumentParser(add_help=False)
    provider.add_argument(
        "--provider",
        required=True,
        choices=("keliweb", "erpeasy", "oauth2"),
        help="which token endpoint dialect to speak",
    )
    provider.add_argument("--client-id", required=True, help="the OAuth2 client id")
    provider.add_argument(
        "--token-url", help="the token endpoint (default: the vendor's; required for oauth2)"
    )

    parser = argparse.ArgumentParser(
        prog="asynctoken",
        description="Keep OAuth2 access tokens valid; refresh each credential exactly once.",
        epilog=_EPILOG,
        formatter_class=formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"asynctoken {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="thousands of coroutines, one refresh per expiry (the default; no network needed)",
        description="Run a fake token server in-process and hammer get_token() through several "
        "token expiries; exit 1 if any expiry caused more than one token request.",
    )
    demo.add_argument(
        "--workers", type=_positive_int, default=5000, help="concurrent coroutines (default: 5000)"
    )
    demo.add_argument(
        "--seconds", type=_positive_float, default=8.0, help="how long to run (default: 8)"
    )
    demo.add_argument(
        "--lifetime",
        type=_positive_float,
        default=2.0,
        help="access token lifetime in seconds (default: 2)",
    )
    demo.set_defaults(handler=cmd_demo)

    status = sub.add_parser(
        "status",
        parents=[common, store],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="list the credentials in a store",
        description="List the credentials in a store: provider, access token expiry, refresh "
        "token presence. Tokens are shown masked.",
    )
    status.add_argument("--json", action="store_true", help="print a JSON array")
    status.set_defaults(handler=cmd_status)

    refresh = sub.add_parser(
        "refresh",
        parents=[common, store, provider],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="force one refresh of a stored credential",
        description=f"Refresh NAME now and save the result. The client secret comes from "
        f"{ENV_CLIENT_SECRET} or a prompt.",
    )
    refresh.add_argument("name", metavar="NAME", help="the credential's key in the store")
    refresh.set_defaults(handler=cmd_refresh)

    add = sub.add_parser(
        "add",
        parents=[common, store, provider],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="bootstrap a credential from a refresh token or a password",
        description=f"Get a first token for NAME and store it. Without --username/--email, the "
        f"refresh token comes from {ENV_REFRESH_TOKEN} or a prompt; with them, the password "
        f"grant is used and the password comes from {ENV_PASSWORD} or a prompt.",
    )
    add.add_argument("name", metavar="NAME", help="the credential's key in the store")
    add.add_argument("--username", help="password grant user (keliweb, oauth2)")
    add.add_argument("--email", help="password grant email (erpeasy, with --company)")
    add.add_argument("--company", help="company CNPJ (erpeasy password grant)")
    add.add_argument(
        "--overwrite", action="store_true", help="replace a credential the store already holds"
    )
    add.set_defaults(handler=cmd_add)
    return parser


def _configure_logging(verbose: bool) -> None:
    logger = logging.getLogger("asynctoken")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        # Errors are reported once, by main(); keep logging's last-resort handler quiet.
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _fail(message: str, code: int, no_color: bool) -> int:
    style = Style(sys.stderr, no_color=no_color)
    sys.stderr.write(f"asynctoken: {style.red('error')}: {message}\n")
    return code


_COMMANDS = frozenset({"demo", "status", "add", "refresh"})
_TOP_LEVEL = frozenset({"-h", "--help", "--version"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see ``asynctoken --help``)."""
    parser = build_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not _COMMANDS.intersection(arguments) and not _TOP_LEVEL.intersection(arguments):
        arguments.insert(0, "demo")  # the default command, with any of its options
    args = parser.parse_args(arguments)
    no_color: bool = getattr(args, "no_color", False)
    _configure_logging(getattr(args, "verbose", False))
    style = Style(sys.stdout, no_color=no_color)
    for stream in (sys.stdout, sys.stderr):  # "…" in masks must never crash a Latin-1 terminal
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args.no_color = no_color
    try:
        code: int = asyncio.run(args.handler(args, style, sys.stdout))
    except CliError as exc:
        return _fail(exc.message, exc.code, no_color)
    except StoreError as exc:
        return _fail(f"store: {exc}", EXIT_STORE, no_color)
    except ConfigurationError as exc:
        return _fail(str(exc), EXIT_USAGE, no_color)
    except TokenError as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_TOKEN, no_color)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, no_color)
    except BrokenPipeError:
        # The reader went away (`asynctoken status | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code
