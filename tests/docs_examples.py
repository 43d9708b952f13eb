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
* ``<!-- run: with NAME[, NAME] -->``: run with these environment variables set by the test
  suite: ``REDIS_URL`` (the session's redis-server), ``REDIS_CLUSTER_URL`` (a node of its Redis
  Cluster), ``ASYNCTOKEN_KEYS`` (two new encryption keys, the primary first);
* ``<!-- run: openid-provider CLIENT -->``: run against the test suite's OpenID provider (npm
  ``oidc-provider``) with ``TOKEN_URL``, ``API_URL`` (a protected resource that checks DPoP and
  certificate binding), ``CLIENT_ID`` (``CLIENT``), ``CLIENT_SECRET``, ``PRIVATE_KEY_FILE``
  (a PEM key registered for the client as ``KEY_ID``) and ``REFRESH_TOKEN`` (a new grant's);
* ``<!-- run: subprocess -->``: run as a script in a new interpreter (for examples that
  configure process-wide state, such as OpenTelemetry's global providers);
* ``<!-- run: pytest -->``: a test module, run by pytest.

A block whose first line is ``--8<-- "path"`` includes a file that is checked where it lives.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)(?P<attrs>[^`]*)$")
_MARKER = re.compile(
    r"^<!-- (?:(?P<run>run: [^>]*?)|not run: (?P<reason>[^>]*?)"
    r"|fragment: (?P<fragment>[^>]*?)) -->$"
)
MODES = (
    "run",
    "not run",
    "fragment",
    "standalone-server",
    "openid-provider",
    "with",
    "subprocess",
    "pytest",
    "included",
)
#: What ``<!-- run: with NAME -->`` may ask for.
ENVIRONMENT = ("REDIS_URL", "REDIS_CLUSTER_URL", "ASYNCTOKEN_KEYS")


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block."""

    path: Path
    line: int  # 1-based line of the first code line
    code: str
    mode: str  # one of MODES
    # the flavor of ``standalone-server``, the client of ``openid-provider``, the variables of
    # ``with`` (comma-separated), the reason of ``not run`` and ``fragment``
    argument: str = ""

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
    words = match.group("run").removeprefix("run:").replace(",", " ").split()
    if words[:1] in (["standalone-server"], ["openid-provider"]) and len(words) == 2:
        return words[0], words[1]
    if words[:1] == ["with"] and len(words) > 1 and set(words[1:]) <= set(ENVIRONMENT):
        return "with", ",".join(words[1:])
    if words in (["pytest"], ["subprocess"]):
        return words[0], ""
    raise ValueError(f"unknown example marker {marker!r}")


def _fence_end(lines: list[str], start: int) -> int:
    """The index of the line closing the fence opened at ``lines[start]``."""
    end = start + 1
    while end < len(lines) and lines[end].strip() != "```":
        end += 1
    return end


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
        end = _fence_end(lines, i)
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed code fence")
        if fence.group("lang") == "python":  # a block in a list item is indented: dedent it
            indent = len(fence.group("indent"))
            code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
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


def command_lines(path: Path) -> list[tuple[str, list[str]]]:
    """The ``asynctoken`` command lines of the ``console`` blocks of one Markdown file.

    Each is ``(where, words)`` with ``words`` starting at the program: ``asynctoken …``,
    ``python -m asynctoken …`` or ``python -m asynctoken.testing …`` (environment assignments
    before it and ``# comments`` after it removed, ``\\`` continuations joined). In a block
    with ``$`` prompts only the prompted lines are commands; the rest is their output.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = _fence_end(lines, i)
        if fence.group("lang") == "console":
            body = [line.strip() for line in lines[i + 1 : end]]
            prompted = any(line.startswith("$ ") for line in body)
            number = i + 1
            while number < end:
                first = number + 1  # 1-based line of the command
                line = lines[number].strip()
                while line.endswith("\\") and number + 1 < end:
                    number += 1
                    line = line[:-1] + " " + lines[number].strip()
                number += 1
                if prompted and not line.startswith("$ "):
                    continue
                command = " ".join(shlex.split(line.removeprefix("$ "), comments=True))
                for part in command.split(" && "):
                    words = part.split()
                    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                        words = words[1:]
                    if words[:1] == ["asynctoken"] or words[:3] in (
                        ["python", "-m", "asynctoken"],
                        ["python", "-m", "asynctoken.testing"],
                    ):
                        found.append((f"{path.relative_to(ROOT)}:{first}", words))
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
