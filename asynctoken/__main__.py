"""``python -m asynctoken``: the command line (see :mod:`asynctoken.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
