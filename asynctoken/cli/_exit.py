"""Exit codes of the ``asynctoken`` command, and the error that carries one to ``main()``."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_STORE", "EXIT_TOKEN", "EXIT_USAGE", "CliError"]

EXIT_OK = 0
EXIT_TOKEN = 1
EXIT_USAGE = 2
EXIT_STORE = 3


class CliError(Exception):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
