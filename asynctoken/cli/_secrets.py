"""Where secrets come from: environment variables, else a ``getpass`` prompt on a terminal.

Never from the command line, where ``ps`` and shell history would keep them.
"""

from __future__ import annotations

import getpass
import os
import sys

from ._exit import EXIT_USAGE, CliError

__all__ = ["ENV_CLIENT_SECRET", "ENV_KEYS", "ENV_PASSWORD", "ENV_REFRESH_TOKEN", "read_secret"]

ENV_CLIENT_SECRET = "ASYNCTOKEN_CLIENT_SECRET"
ENV_REFRESH_TOKEN = "ASYNCTOKEN_REFRESH_TOKEN"
ENV_PASSWORD = "ASYNCTOKEN_PASSWORD"
#: Encryption keys of the store (``KEY_ID:BASE64`` entries, see :mod:`asynctoken.crypto`); the
#: same name as ``asynctoken.crypto.ENV_KEYS``, which needs the optional crypto extra to import.
ENV_KEYS = "ASYNCTOKEN_KEYS"


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
