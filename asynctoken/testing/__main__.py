"""Run a fake OAuth server in its own process, for tests that need one out of process.

Usage::

    python -m asynctoken.testing --flavor keliweb --port 0 [--expires-in 60] ...

Prints the token URL as the first stdout line and the protected API URL as the second, then
serves until SIGTERM / SIGINT, until ``--lifetime`` seconds have passed (600 by default: a
forgotten server does not run forever), or until its parent process dies. The ``/_fake/…``
control routes are on (see :mod:`asynctoken.testing._control`): fetch a seed refresh token with
``POST <base>/_fake/refresh-token``, counters with ``GET <base>/_fake/stats``. Nothing secret is
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from ._server import FakeOAuthServer

__all__ = ["main"]


_EPILOG = """\
control routes (JSON, loopback only):
  GET  /_fake/stats                  counters and outcome tally
  GET  /_fake/requests               token requests (tokens masked, arrival times)
  POST /_fake/refresh-token          {"refresh_token": ...}: a seed in a new family
  POST /_fake/token                  a full token pair, as Token.to_dict()
  POST /_fake/expire-access-tokens   expire every access token
  POST /_fake/expire-refresh-tokens  expire every refresh token
  POST /_fake/fail-next              {"n", "status", "retry_after", "error", "delay"}
  POST /_fake/hold                   park token requests at the gate
  POST /_fake/release                {"n"} (optional): let parked requests go on
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asynctoken.testing",
        description=__doc__.split("\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--flavor",
        choices=("keliweb", "erpeasy", "oauth2"),
        default="keliweb",
        help="which server to imitate (default: keliweb)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="a loopback address to bind (default: 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=0, help="the port; 0 picks a free one (default: 0)")
    p.add_argument(
        "--client-id",
        default="test-client",
        help="the one client id accepted (default: test-client)",
    )
    p.add_argument(
        "--client-secret", default="test-secret", help="its secret (default: test-secret)"
    )
    p.add_argument(
        "--expires-in",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="access-token lifetime (default: 3600)",
    )
    p.add_argument(
        "--refresh-token-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="refresh-token lifetime from issue (default: none, they live as long as the server)",
    )
    p.add_argument(
        "--no-rotate",
        dest="rotate",
        action="store_false",
        help="keep a refresh token valid after use (default: rotate on every refresh)",
    )
    p.add_argument(
        "--no-revoke-family-on-reuse",
        dest="revoke_family_on_reuse",
        action="store_false",
        help="do not revoke the token family when a retired refresh token comes back "
        "(default: revoke it)",
    )
    p.add_argument(
        "--passport-legacy-errors",
        action="store_true",
        help="keliweb: answer a dead refresh token with 401 invalid_request, as older "
        "Passport does (default: 400 invalid_grant)",
    )
    p.add_argument(
        "--whole-second-expiry",
        action="store_true",
        help="access tokens expire at floor(now) + expires-in, as JWT issuers do "
        "(default: exactly expires-in after issue)",
    )
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="a password-grant user, repeatable (default: user@example.com:pw)",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="latency added to every token response (default: 0)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="make token values reproducible (default: random)"
    )
    p.add_argument(
        "--lifetime",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="exit after this long (default: 600)",
    )
    return p


def _build(args: argparse.Namespace) -> FakeOAuthServer:
    if any(":" not in u for u in args.user):
        raise ValueError("--user takes NAME:PASSWORD")
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    return FakeOAuthServer(
        args.flavor,
        client_id=args.client_id,
        client_secret=args.client_secret,
        expires_in=args.expires_in,
        refresh_token_ttl=args.refresh_token_ttl,
        rotate=args.rotate,
        revoke_family_on_reuse=args.revoke_family_on_reuse,
        passport_legacy_errors=args.passport_legacy_errors,
        whole_second_expiry=args.whole_second_expiry,
        users=users,
        delay=args.delay,
        host=args.host,
        port=args.port,
        seed=args.seed,
        control_api=True,
    )


async def _serve(server: FakeOAuthServer, lifetime: float) -> int:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def _stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows
            loop.add_signal_handler(sig, _stop)
    parent = os.getppid()
    async with server:
        print(server.token_url, flush=True)
        print(server.api_url, flush=True)
        deadline = loop.time() + lifetime
        while not stop.done() and loop.time() < deadline:
            # wake up now and then only to notice that the parent died (re-parented)
            await asyncio.wait({stop}, timeout=min(0.5, max(0.0, deadline - loop.time())))
            if os.getppid() != parent:
                break
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m asynctoken.testing``."""
    args = _parser().parse_args(argv)
    try:
        server = _build(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(server, args.lifetime))


if __name__ == "__main__":
    sys.exit(main())
