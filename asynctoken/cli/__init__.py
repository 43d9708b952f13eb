"""The ``asynctoken`` command: ``python -m asynctoken [demo|status|add|refresh|rekey]``.

``demo`` (the default) needs no network and no configuration; the other commands work on a store
(a JSON file, or a ``redis://`` URL). Secrets are never taken from the command line, where
``ps`` and shell history would keep them: they come from environment variables or, on a
terminal, a ``getpass`` prompt. Nothing printed ever contains a secret beyond a short prefix.

This package holds the argument parser and :func:`main`; the commands live in ``_demo``
(``demo``), ``_commands`` (``status``, ``add``, ``refresh``) and ``_rekey`` (``rekey``), on top
of ``_output`` (colours, durations, masked tokens), ``_secrets`` (environment or prompt) and
``_exit`` (exit codes).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import math
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from .._errors import ConfigurationError, StoreError, TokenError
from ._commands import cmd_add, cmd_refresh
from ._demo import _DemoStats as _DemoStats  # re-exported for tests/test_cli.py
from ._demo import _summarize as _summarize  # re-exported for tests/test_cli.py
from ._demo import cmd_demo
from ._exit import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STORE,
    EXIT_TOKEN,
    EXIT_USAGE,
    CliError,
    OutputError,
)
from ._output import GuardedOutput, Style
from ._rekey import add_parser as _add_rekey_parser
from ._secrets import ENV_CLIENT_SECRET, ENV_KEYS, ENV_PASSWORD, ENV_REFRESH_TOKEN
from ._status import cmd_status

__all__ = ["main"]

_EPILOG = f"""\
secrets (never command-line arguments):
  {ENV_CLIENT_SECRET}   the OAuth2 client secret
  {ENV_REFRESH_TOKEN}   the refresh token to bootstrap a credential with (add)
  {ENV_PASSWORD}        the password for the password grant (add)
  {ENV_KEYS}            encryption keys of the store, KEY_ID:BASE64 entries, the
                             primary first (needed by rekey; used by every command if set)
  When a variable is unset and stdin is a terminal, you are prompted without echo.

exit codes:
  0  success
  1  token or endpoint error (rejected refresh token or client, endpoint unreachable,
     unknown credential, a due credential not renewed, or the demo's invariant broken)
  2  usage error (bad arguments, missing secret, credential already exists)
  3  store error (missing or corrupt store file, Redis unreachable, a damaged record,
     a record rekey cannot open)
  4  output error (standard output closed or not writable, e.g. a full disk)
  5  unexpected internal error (a bug; -v prints the traceback)

Colours are used on a terminal only, and never when NO_COLOR is set.
"""


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
        help="a JSON token file, an SQLite database (sqlite:PATH, or a path ending in .sqlite, "
        ".sqlite3 or .db), or a redis:// or rediss:// URL",
    )
    store.add_argument("--prefix", help="key prefix of a Redis store (default: asynctoken:)")
    store.add_argument(
        "--cluster",
        action="store_true",
        help="the redis:// URL is a node of a Redis Cluster",
    )

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
        "--seconds",
        type=_positive_float,
        default=8.0,
        metavar="SECONDS",
        help="how long to run (default: 8)",
    )
    demo.add_argument(
        "--lifetime",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="access-token lifetime (default: 2)",
    )
    demo.set_defaults(handler=cmd_demo)

    status = sub.add_parser(
        "status",
        parents=[common, store],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="list the credentials in a store",
        description="List the credentials in a store: provider, access token expiry, refresh "
        "token presence, when the refresh token dies, failed refreshes and whether a person must "
        "re-authorize. Tokens are shown masked.",
    )
    status.add_argument("--json", action="store_true", help="print a JSON array")
    status.set_defaults(handler=cmd_status)

    refresh = sub.add_parser(
        "refresh",
        parents=[common, store, provider],
        formatter_class=formatter,
        epilog=_EPILOG,
        help="force one refresh of a stored credential, or renew those due (--due)",
        description=f"Refresh NAME now and save the result. With --due instead of NAME, renew "
        f"every credential of --provider whose refresh token would otherwise die of idleness "
        f"soon (Keliweb: after 8 of its 10 days), once across every process sharing the store: "
        f"run it from cron. The client secret comes from {ENV_CLIENT_SECRET} or a prompt.",
    )
    refresh.add_argument(
        "name", metavar="NAME", nargs="?", help="the credential's key in the store"
    )
    refresh.add_argument(
        "--due",
        action="store_true",
        help="renew the credentials whose refresh token is due instead of one NAME",
    )
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
    _add_rekey_parser(sub, [common, store], formatter_class=formatter, epilog=_EPILOG)
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
    stderr = sys.stderr
    if stderr is None:  # closed too (2>&-): the exit code is all that is left
        return code
    style = Style(stderr, no_color=no_color)
    try:
        stderr.write(f"asynctoken: {style.red('error')}: {message}\n")
        stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def _flush_quietly() -> None:
    stdout = sys.stdout
    if stdout is None:
        return
    try:
        stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so that the flush at exit cannot fail again."""
    stdout = sys.stdout
    if stdout is None:
        return
    try:
        fileno = stdout.fileno()
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fileno)
    finally:
        os.close(devnull)


_COMMANDS = frozenset({"demo", "status", "add", "refresh", "rekey"})
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
    if sys.stdout is None:  # started with stdout closed (>&-): nothing could be reported
        return _fail("standard output is closed; nothing was done", EXIT_OUTPUT, no_color)
    out = GuardedOutput(sys.stdout)
    try:
        code: int = asyncio.run(args.handler(args, style, out))
        out.flush()  # a full disk must fail here, not in the interpreter's flush at exit
    except OutputError as exc:
        _silence_stdout()
        if exc.broken_pipe:
            # The reader went away (`asynctoken status | head`): stop quietly.
            return EXIT_OK
        return _fail(exc.message, EXIT_OUTPUT, no_color)
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
    except Exception as exc:
        # A bug, or a failure nothing above knows about. Its message is not printed: it may
        # quote anything (a header, a URL with a query); -v prints the whole traceback.
        if getattr(args, "verbose", False) and sys.stderr is not None:
            traceback.print_exc()
        return _fail(
            f"unexpected {type(exc).__name__}; run with -v for the traceback",
            EXIT_INTERNAL,
            no_color,
        )
    finally:
        # After a failure, output written before it may still be buffered: flush it now, so
        # that a full disk cannot add a complaint at exit to the error already reported.
        _flush_quietly()
    return code
