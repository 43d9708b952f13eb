"""Exit codes of the ``asynctoken`` command, and the errors that carry one to ``main()``."""

from __future__ import annotations

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_STORE",
    "EXIT_TOKEN",
    "EXIT_USAGE",
    "CliError",
    "OutputError",
]

EXIT_OK = 0
EXIT_TOKEN = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_OUTPUT = 4  # standard output closed or not writable (e.g. a full disk)
EXIT_INTERNAL = 5  # an unexpected exception: a bug


class CliError(Exception):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class OutputError(Exception):
    """Writing to standard output failed; raised from the :class:`OSError` it replaces.

    Attributes:
        broken_pipe: the reader went away (``asynctoken status | head``): not worth a message.
    """

    def __init__(self, message: str, *, broken_pipe: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.broken_pipe = broken_pipe
