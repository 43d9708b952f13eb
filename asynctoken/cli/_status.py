"""``asynctoken status``: every credential of a store, and what it is doing.

The same facts as :meth:`TokenManager.status() <asynctoken.TokenManager.status>` (through
:func:`asynctoken._status.describe`), from the stored records alone: access-token expiry,
refresh-token presence, age and known remaining life ("refresh token dies in 8 days"), the
refreshes that failed since the last good token, and whether a person must re-authorize.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .._errors import StoreError
from .._secrets import mask
from .._status import DAY, CredentialStatus, describe, read_records
from .._token import Token
from ._commands import _store_label, open_store
from ._exit import EXIT_OK, EXIT_STORE
from ._output import Output, Style, human_delta, printable

__all__ = ["cmd_status"]

_STATUS_BATCH = 100  # records fetched together
_KEY_WIDTH = 24
#: Below this much remaining life, a refresh token is shown as a warning.
_SOON = 2 * DAY


async def cmd_status(args: argparse.Namespace, style: Style, out: Output) -> int:
    """List the credentials of a store, one batch of records in memory at a time.

    Memory stays bounded however many keys the store holds: keys are read in batches of
    ``_STATUS_BATCH`` whose records are fetched concurrently, and a key is skipped as a
    duplicate only within its batch. Redis ``SCAN`` may, rarely (while the server resizes its
    table), yield a key twice; such a key is then listed twice.

    A record that cannot be read is listed as damaged, with what is wrong, and the others are
    still listed; the exit status is then ``EXIT_STORE``.
    """
    store = open_store(args, must_exist=True)
    label = _store_label(args.store)
    count = damaged = reauthorize = 0
    header = f"{'KEY':<{_KEY_WIDTH}}  {'PROVIDER':<9}  {'ACCESS TOKEN':<20}  REFRESH TOKEN"
    try:
        async for key, record in read_records(store, _STATUS_BATCH):
            now = time.time()
            if isinstance(record, StoreError):
                status = describe(key, None, now, damaged=record.message)
            else:
                status = describe(key, record, now)
            # Nothing is printed before the first record: a failing store prints only an error.
            if args.json:
                row = _as_json(status, record)
                out.write(("[\n  " if not count else ",\n  ") + json.dumps(row))
            else:
                if not count:
                    out.write(style.bold(header) + "\n")
                out.write(_as_text(status, record, style) + "\n")
            count += 1
            damaged += status.damaged is not None
            reauthorize += status.needs_reauthorization
            if count % _STATUS_BATCH == 0:
                out.flush()
        if args.json:
            out.write("\n]\n" if count else "[]\n")
        else:
            plural = "" if count == 1 else "s"
            summary = f"{count} credential{plural} in {label}"
            if damaged:
                summary += f", {damaged} damaged"
            if reauthorize:
                summary += f", {reauthorize} to re-authorize"
            out.write(style.dim(summary) + "\n")
    finally:
        await store.aclose()
    return EXIT_STORE if damaged else EXIT_OK


def _as_json(status: CredentialStatus, record: Token | StoreError) -> dict[str, Any]:
    if isinstance(record, StoreError):
        return {"key": status.key, "state": "damaged", "error": record.message}
    now = status.checked_at
    expires_at = status.access_token_expires_at
    dies_at = status.refresh_token_expires_at
    failure = status.last_failure
    return {
        "key": status.key,
        "provider": status.provider,
        "state": status.access_token_state,
        "expires_at": expires_at,
        "expires_in": None if expires_at is None else round(expires_at - now, 3),
        "token_type": record.token_type,
        "scope": record.scope,
        "access_token": mask(record.access_token) if record.access_token else None,
        "has_refresh_token": status.has_refresh_token,
        "refresh_token": mask(record.refresh_token) if record.refresh_token else None,
        "last_refresh_at": status.last_refresh_at,
        "refresh_token_issued_at": status.refresh_token_issued_at,
        "refresh_token_age": _rounded(status.refresh_token_age),
        "refresh_token_expires_at": dies_at,
        "refresh_token_expires_in": _rounded(status.refresh_token_remaining),
        "failures": status.consecutive_failures,
        "last_failure": failure.to_dict() if failure is not None else None,
        "needs_reauthorization": status.needs_reauthorization,
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _as_text(status: CredentialStatus, record: Token | StoreError, style: Style) -> str:
    key = printable(status.key)
    if isinstance(record, StoreError):
        return f"{key:<{_KEY_WIDTH}}  {style.red('damaged')}: {printable(record.message)}"
    if status.access_token_expires_at is None:
        expiry = style.yellow(f"{'never refreshed':<20}")
    else:
        remaining = status.access_token_expires_at - status.checked_at
        text = f"{human_delta(remaining):<20}"
        expiry = (
            style.green(text)
            if remaining > 300
            else (style.yellow(text) if remaining > 0 else style.red(text))
        )
    refresh = (
        f"yes ({printable(mask(record.refresh_token))})"
        if record.refresh_token
        else style.red("no")
    )
    # Keys and provider names come from the store: escape sequences must not reach the
    # terminal. (--json needs nothing: json.dumps escapes every control character.)
    provider = printable(status.provider or "?")
    line = f"{key:<{_KEY_WIDTH}}  {provider:<9}  {expiry}  {refresh}"
    notes = _notes(status, style)
    return f"{line}  {'; '.join(notes)}" if notes else line


def _notes(status: CredentialStatus, style: Style) -> list[str]:
    """What else to say: the refresh token's life, failed refreshes, re-authorization."""
    notes: list[str] = []
    remaining, age = status.refresh_token_remaining, status.refresh_token_age
    if remaining is not None:
        if remaining <= 0:
            notes.append(style.red(f"refresh token died {_span(-remaining)} ago"))
        else:
            text = f"refresh token dies in {_span(remaining)}"
            notes.append(style.yellow(text) if remaining < _SOON else text)
    elif age is not None:
        notes.append(f"refresh token {_span(age)} old")
    elif status.has_refresh_token and status.refresh_token_lifetime is not None:
        notes.append(
            f"refresh token of unknown age (dies after {_span(status.refresh_token_lifetime)} "
            "unused)"
        )
    failure = status.last_failure
    if failure is not None:
        word = "refresh" if failure.count == 1 else "refreshes"
        since = human_delta(failure.at - status.checked_at).removeprefix("expired ")
        text = f"{failure.count} failed {word}, last {since}: {printable(failure.error)}"
        notes.append(style.yellow(text))
    if status.needs_reauthorization:
        notes.append(style.red(style.bold("needs re-authorization")))
    return notes


def _span(seconds: float) -> str:
    """``"8 days"``, ``"1 day"``, or shorter spans as :func:`human_delta` words them."""
    if seconds >= 2 * DAY:
        return f"{seconds / DAY:.0f} days"
    return human_delta(seconds).removeprefix("in ")
