"""The code examples of the documentation site (``docs/**/*.md``) and of ``README.md``.

Used by ``tests/test_docs_examples.py`` (run them) and by ``nox -s typing`` (type-check them:
``python tests/docs_examples.py --write DIR`` writes one module per page for mypy).

A fenced ``python`` block is run as written unless an HTML comment on the line just above it
says otherwise (the comment is invisible on the site and on GitHub):

* ``<!-- not run: REASON -->``: compiled and type-checked only (it needs a real provider...);
* ``<!-- fragment: REASON -->``: compiled only (it continues another block: its names are
  defined there);
* ``<!-- run: standalone-server FLAVOR -->``: run with ``python -m asynctoken.testing --flavor
  FLAVOR`` started for it and ``TOKEN_URL``, ``API_URL``, ``CLIENT_ID``, ``CLIENT_SECRET``,
  ``REFRESH_TOKEN`` in the environment;
* ``<!-- run: with REDIS_URL -->``: run with ``REDIS_URL`` pointing at the test redis-server;
* ``<!-- run: pytest -->``: a test module, run by pytest.

A block whose first line is ``--8<-- "path"`` includes a file that is checked where it lives.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<attrs>[^`]*)$")
_MARKER = re.compile(
    r"^<!-- (?:(?P<run>run: [^>]*?)|not run: (?P<reason>[^>]*?)"
    r"|fragment: (?P<fragment>[^>]*?)) -->$"
)
MODES = ("run", "not run", "fragment", "standalone-server", "redis", "pytest", "included")


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block."""

    path: Path
    line: int  # 1-based line of the first code line
    code: str
    mode: str  # one of MODES
    argument: str = ""  # the flavor of ``standalone-server``, the reason of ``not run``

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def source(self) -> str:
        """The code, shifted so that tracebacks and compile errors name the Markdown line."""
        return "\n" * (self.line - 1) + self.code


def pages() -> list[Path]:
    """README.md and every page of the site, in a stable order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _mode(marker: str | None) -> tuple[str, str]:
    if marker is None:
        return "run", ""
    match = _MARKER.match(marker)
    if match is None:
        return "run", ""
    if match.group("fragment") is not None:
        return "fragment", match.group("fragment").strip()
    if match.group("reason") is not None:
        return "not run", match.group("reason").strip()
    words = match.group("run").removeprefix("run:").split()
    if words[:1] == ["standalone-server"] and len(words) == 2:
        return "standalone-server", words[1]
    if words == ["with", "REDIS_URL"]:
        return "redis", ""
    if words == ["pytest"]:
        return "pytest", ""
    raise ValueError(f"unknown example marker {marker!r}")


def blocks(path: Path) -> list[Block]:
    """The ``python`` blocks of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    previous: str | None = None
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed code fence")
        if fence.group("lang") == "python":
            code = "\n".join(lines[i + 1 : end]) + "\n"
            if code.startswith("--8<--"):
                found.append(Block(path, i + 2, code, "included"))
            else:
                try:
                    mode, argument = _mode(previous)
                except ValueError as exc:
                    raise ValueError(f"{path}:{i}: {exc}") from None
                found.append(Block(path, i + 2, code, mode, argument))
        previous = None
        i = end + 1
    return found


def type_check_module(page: Path) -> str | None:
    """The page's examples as one module for mypy, or ``None`` for a page without examples.

    Each block is complete on its own and may ``await`` at top level: it becomes the body of an
    ``async def`` of its own (a pytest module too: its functions are then nested, which mypy
    checks the same way).
    """
    page_blocks = [b for b in blocks(page) if b.mode not in ("included", "fragment")]
    if not page_blocks:
        return None
    parts = [f"# Examples of {page.relative_to(ROOT)}, for mypy (generated).\n"]
    for number, block in enumerate(page_blocks):
        parts.append(f"\n\n# {block.where}\nasync def _example_{number}() -> None:\n")
        parts.append(textwrap.indent(block.code, "    "))
        parts.append("    pass\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the documentation's examples for mypy.")
    parser.add_argument("--write", metavar="DIR", required=True, type=Path)
    args = parser.parse_args(argv)
    args.write.mkdir(parents=True, exist_ok=True)
    for old in args.write.glob("*.py"):
        old.unlink()
    count = 0
    for page in pages():
        module = type_check_module(page)
        if module is None:
            continue
        name = re.sub(r"\W", "_", str(page.relative_to(ROOT).with_suffix(""))).lower()
        (args.write / f"docs_example_{name}.py").write_text(module, encoding="utf-8")
        count += 1
    print(f"wrote {count} example modules to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
