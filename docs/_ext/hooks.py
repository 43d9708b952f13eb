"""MkDocs hooks: command-line help generated from the parsers when the site is built.

``<!-- help: asynctoken status -->`` in a page becomes that command's ``--help`` text, so the
reference can never disagree with the program. Needs asynctoken importable (``nox -s docs``
installs it).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

_HELP = re.compile(r"^<!-- help: (?P<command>[^>]+?) -->$", re.MULTILINE)


def _help(command: str) -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: make it stable
    words = command.split()
    if words[:3] == ["python", "-m", "asynctoken.testing"]:
        from asynctoken.testing.__main__ import _parser

        parser = _parser()
        parser.prog = "python -m asynctoken.testing"
        args = [*words[3:], "--help"]
    elif words[:1] == ["asynctoken"]:
        from asynctoken.cli import build_parser

        parser = build_parser()
        args = [*words[1:], "--help"]
    else:
        raise ValueError(f"unknown command in a help marker: {command!r}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(args)
    text = out.getvalue().rstrip()
    if not text:
        raise ValueError(f"{command} --help printed nothing")
    return f"```text\n$ {command} --help\n{text}\n```"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _HELP.sub(lambda m: _help(m.group("command")), markdown)
