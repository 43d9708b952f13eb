"""The commands that work on a store: ``add`` and ``refresh`` (``status`` is in ``_status``).

``--store`` is a JSON file path or a ``redis://`` URL; ``add`` and ``refresh`` also build the
provider named by ``--provider``, with its secrets from the environment or a prompt.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from typing import Any

from .._errors import CredentialNotFoundError, StoreError
from .._manager import TokenManager
from ..providers import ERPeasyProvider, KeliwebProvider, OAuth2Provider, Provider
from ..stores._base import TokenStore
from ..stores._records import Cipher
from ._exit import EXIT_OK, EXIT_STORE, EXIT_TOKEN, EXIT_USAGE, CliError
from ._output import Output, Style, _token_line, printable
from ._secrets import ENV_CLIENT_SECRET, ENV_KEYS, ENV_PASSWORD, ENV_REFRESH_TOKEN, read_secret

__all__ = ["build_provider", "cmd_add", "cmd_refresh", "open_store", "store_cipher"]


# --------------------------------------------------------------------------- stores and providers


_SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def _is_redis_url(target: str) -> bool:
    return target[:10].lower().startswith(("redis://", "rediss://", "unix://"))


def _store_label(target: str) -> str:
    """The store argument as it may be printed: a Redis URL with any password (``user:pw@``
    or ``?password=``) replaced by ``***``."""
    if not _is_redis_url(target):
        return printable(target)
    try:
        from ..stores._redis import redact_url
    except ImportError:  # no redis package: open_store has refused the URL already
        return "<Redis URL>"
    return printable(redact_url(target))


def store_cipher(*, required: bool = False) -> Cipher | None:
    """The cipher of the keys in ``ASYNCTOKEN_KEYS``, or ``None`` when it is unset.

    Raises:
        CliError: it is unset although ``required``, or the crypto extra is missing (exit 2).
        ConfigurationError: its value is malformed (exit 2; the message holds no key material).
    """
    if not os.environ.get(ENV_KEYS, "").strip():
        if required:
            raise CliError(
                f"no encryption keys: set {ENV_KEYS} to KEY_ID:BASE64 entries, the primary first",
                EXIT_USAGE,
            )
        return None
    try:
        from ..crypto import AESGCMCipher
    except ImportError as exc:
        raise CliError(f"{exc}; it is needed for {ENV_KEYS}", EXIT_USAGE) from None
    return AESGCMCipher.from_env(ENV_KEYS)


def open_store(
    args: argparse.Namespace, *, must_exist: bool, cipher: Cipher | None = None
) -> TokenStore:
    """Open ``--store``: a ``redis://`` or ``rediss://`` URL, ``sqlite:PATH`` (also a path ending
    in ``.sqlite``, ``.sqlite3`` or ``.db``) for an SQLite database, else a JSON file path.

    Records are sealed and opened with ``cipher``, by default the keys of ``ASYNCTOKEN_KEYS``
    when it is set.

    Raises:
        CliError: the file does not exist although it must (exit code 3).
    """
    target: str = args.store
    if cipher is None:
        cipher = store_cipher()
    if _is_redis_url(target):
        try:
            from ..stores import RedisStore
        except ImportError as exc:  # the redis extra is not installed
            raise CliError(
                f"cannot open a Redis store: {exc}; install asynctoken[redis]", EXIT_STORE
            ) from exc
        cluster = bool(getattr(args, "cluster", False))
        if args.prefix is None:
            return RedisStore(target, cipher=cipher, cluster=cluster)
        return RedisStore(target, prefix=args.prefix, cipher=cipher, cluster=cluster)
    if args.prefix is not None or getattr(args, "cluster", False):
        raise CliError("--prefix and --cluster apply to Redis stores only", EXIT_USAGE)
    sqlite = target.startswith("sqlite:") or target.lower().endswith(_SQLITE_SUFFIXES)
    path = target.removeprefix("sqlite:")
    if path.startswith("//"):  # sqlite:///absolute/path, as in SQLAlchemy URLs
        path = path[2:]
    if must_exist and not os.path.exists(path):
        raise CliError(f"store file not found: {path}", EXIT_STORE)
    if os.path.isdir(path):
        raise CliError(f"store path is a directory, not a file: {path}", EXIT_STORE)
    if sqlite:
        from ..stores import SQLiteStore

        return SQLiteStore(path, cipher=cipher)
    from ..stores import FileStore

    return FileStore(path, cipher=cipher)


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


async def _batches(keys: AsyncIterator[str], size: int) -> AsyncIterator[list[str]]:
    """``keys`` in lists of at most ``size``."""
    batch: list[str] = []
    async for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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


async def cmd_add(args: argparse.Namespace, style: Style, out: Output) -> int:
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


async def cmd_refresh(args: argparse.Namespace, style: Style, out: Output) -> int:
    """Force one refresh of a stored credential through the given provider (or, with
    ``--due``, renew every credential of that provider whose refresh token is due)."""
    if (args.name is None) == (not args.due):
        raise CliError("give either NAME or --due", EXIT_USAGE)
    _check_provider_args(args)
    if args.due:
        return await _refresh_due(args, style, out)
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


async def _refresh_due(args: argparse.Namespace, style: Style, out: Output) -> int:
    """``refresh --due``: renew the due credentials issued by ``--provider``; the others are
    left alone. Exit 1 if any due credential could not be renewed."""
    store = open_store(args, must_exist=True)
    provider = build_provider(args, password_grant=False)

    async def ours(key: str) -> Provider | None:
        record = await store.get(key)
        return provider if record is not None and record.provider == provider.name else None

    async with TokenManager(store=store, provider_factory=ours) as manager:  # closes the store
        results = await manager.refresh_due()
    renewed = failed = 0
    for key, error in results.items():
        if error is None:
            renewed += 1
            out.write(f"{style.green('renewed')} {printable(key)!r}\n")
        elif not isinstance(error, CredentialNotFoundError):
            failed += 1
            out.write(f"{style.red('failed')}  {printable(key)!r}: {printable(str(error))}\n")
    skipped = len(results) - renewed - failed
    summary = f"{len(results)} due in {_store_label(args.store)}: {renewed} renewed"
    if skipped:
        summary += f", {skipped} of another provider left alone"
    if failed:
        summary += f", {failed} failed"
    out.write(style.dim(summary) + "\n")
    return EXIT_TOKEN if failed else EXIT_OK
