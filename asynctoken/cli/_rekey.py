"""``asynctoken rekey``: seal every record of a store anew with the primary key.

The keys come from ``ASYNCTOKEN_KEYS`` (see :mod:`asynctoken.crypto`): the new key first (the
primary), the old ones after it. Records are taken a batch of keys at a time and re-sealed with the
store's compare-and-swap (``reseal``), so that a refresh written by a running application
meanwhile is never overwritten: the running application needs the same key list, so that it too
opens old records and seals new ones with the primary. Records already sealed with the primary
are skipped, which makes an interrupted run resumable: run it again. Records that cannot be
opened are listed (key and key id, never content) and left as they are; the exit code is then 3.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..stores._records import Resealed
from ._commands import _batches, _store_label, open_store, store_cipher
from ._exit import EXIT_OK, EXIT_STORE, CliError
from ._output import Output, Style, printable

__all__ = ["cmd_rekey"]


async def cmd_rekey(args: argparse.Namespace, style: Style, out: Output) -> int:
    """Re-seal every record of ``--store`` with the primary key of ``ASYNCTOKEN_KEYS``."""
    cipher = store_cipher(required=True)
    assert cipher is not None
    store = open_store(args, must_exist=True, cipher=cipher)
    reseal = getattr(store, "reseal", None)
    if reseal is None:  # pragma: no cover - every store the command opens has it
        raise CliError(f"{type(store).__name__} cannot re-seal records", EXIT_STORE)
    label = _store_label(args.store)
    rewritten = unchanged = failed = 0
    try:
        async for batch in _batches(store.keys(), args.batch):
            result: Resealed = await reseal(batch)
            rewritten += result.rewritten
            unchanged += result.unchanged
            for error in result.errors:
                failed += 1
                out.write(f"{style.red('not re-sealed')}: {printable(str(error))}\n")
            if getattr(args, "verbose", False):
                out.write(style.dim(f"{rewritten + unchanged + failed} records done") + "\n")
            out.flush()
    finally:
        await store.aclose()
    summary = (
        f"{rewritten} re-sealed with key {cipher.primary!r}, {unchanged} already sealed with it, "
        f"{failed} could not be opened, in {label}"
    )
    out.write((style.red(summary) if failed else style.green(summary)) + "\n")
    return EXIT_STORE if failed else EXIT_OK


def add_parser(sub: Any, parents: list[argparse.ArgumentParser], **kwargs: Any) -> None:
    """Register ``rekey`` on the command's subparsers."""
    from . import _positive_int

    rekey = sub.add_parser(
        "rekey",
        parents=parents,
        help="re-seal every record with the primary encryption key (key rotation)",
        description="Re-seal every record of the store with the primary (first) key of "
        "ASYNCTOKEN_KEYS, through the store's compare-and-swap: safe while applications run, "
        "resumable (records already sealed with the primary are skipped). Plain records are "
        "sealed too. Exit 3 if any record could not be opened (each is listed).",
        **kwargs,
    )
    rekey.add_argument(
        "--batch",
        type=_positive_int,
        default=100,
        help="keys re-sealed per store write (FileStore) or per round (default: 100)",
    )
    rekey.set_defaults(handler=cmd_rekey)
