"""Every code example of the documentation site and of the README runs, as written.

The rules (which blocks run how) are in ``tests/docs_examples.py`` and on the site's page
"How the examples are checked". Blocks that cannot run are compiled here and type-checked by
``nox -s typing``; examples in public docstrings are compiled here too.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import re
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docs_examples import ROOT, Block, blocks, command_lines, pages

import asynctoken

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_PAGES = [page for page in pages() if blocks(page)]


def _compile(block: Block) -> Any:
    return compile(block.source(), str(block.path), "exec", flags=_FLAGS, dont_inherit=True)


@contextlib.contextmanager
def _standalone_server(flavor: str) -> Iterator[dict[str, str]]:
    """``python -m asynctoken.testing`` in its own process, as the tutorial starts it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "asynctoken.testing", "--flavor", flavor, "--lifetime", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        token_url = process.stdout.readline().strip()
        api_url = process.stdout.readline().strip()
        assert token_url.endswith("/oauth/token"), token_url
        base_url = token_url.removesuffix("/oauth/token")
        seed_request = urllib.request.Request(f"{base_url}/_fake/refresh-token", method="POST")
        with urllib.request.urlopen(seed_request, timeout=10) as response:
            seed = json.load(response)["refresh_token"]
        yield {
            "TOKEN_URL": token_url,
            "API_URL": api_url,
            "CLIENT_ID": "test-client",
            "CLIENT_SECRET": "test-secret",
            "REFRESH_TOKEN": seed,
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _run_pytest(block: Block, directory: Path) -> None:
    test_file = directory / f"test_example_{block.line}.py"
    test_file.write_text(block.code, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            str(test_file),
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.where}: the example test failed\n{result.stdout}"
    assert re.search(r"\b[1-9]\d* passed\b", result.stdout), result.stdout


def _environment(block: Block, request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables a ``with`` or ``openid-provider`` block reads (tests/docs_examples.py)."""
    environment: dict[str, str] = {}
    if block.mode == "with":
        for name in block.argument.split(","):
            if name == "REDIS_URL":
                environment[name] = request.getfixturevalue("redis_url")
            elif name == "REDIS_CLUSTER_URL":
                environment[name] = request.getfixturevalue("redis_cluster").url
            elif name == "ASYNCTOKEN_KEYS":
                from asynctoken.crypto import format_key, generate_key

                keys = (format_key(key_id, generate_key()) for key_id in ("2026-12", "2026-06"))
                environment[name] = ",".join(keys)
            else:  # pragma: no cover - docs_examples.py refuses other names
                raise AssertionError(f"{block.where}: no value for {name}")
    elif block.mode == "openid-provider":
        from oidc_server import CLIENT_SECRET

        oidc = request.getfixturevalue("oidc_server")
        environment |= {
            "TOKEN_URL": oidc.token_url,
            "API_URL": oidc.issuer + "/resource",
            "CLIENT_ID": block.argument,
            "CLIENT_SECRET": CLIENT_SECRET,
            "PRIVATE_KEY_FILE": str(oidc.keys.directory / "ec-key.pem"),
            "KEY_ID": "ec-1",
            "REFRESH_TOKEN": oidc.seed(block.argument),
        }
    return environment


def _run_subprocess(block: Block, directory: Path) -> None:
    script = directory / f"example_{block.line}.py"
    script.write_text(block.source(), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{block.where}: the example failed\n{result.stdout}\n{result.stderr}"
    )


def _run_page(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    loop = asyncio.new_event_loop()
    try:
        for block in blocks(page):
            if block.mode == "included":
                continue
            code = _compile(block)  # every block compiles, run or not
            if block.mode in ("not run", "fragment"):
                assert block.argument, f"{block.where}: say why the example is not run"
                continue
            if block.mode == "pytest":
                _run_pytest(block, tmp_path)
                continue
            if block.mode == "subprocess":
                _run_subprocess(block, tmp_path)
                continue
            with contextlib.ExitStack() as stack:
                if block.mode == "standalone-server":
                    for name, value in stack.enter_context(
                        _standalone_server(block.argument)
                    ).items():
                        monkeypatch.setenv(name, value)
                for name, value in _environment(block, request).items():
                    monkeypatch.setenv(name, value)
                namespace: dict[str, Any] = {"__name__": "__main__"}  # each block is complete
                try:
                    if code.co_flags & inspect.CO_COROUTINE:
                        loop.run_until_complete(eval(code, namespace))
                    else:
                        exec(code, namespace)
                except Exception as exc:
                    raise AssertionError(f"the example at {block.where} failed: {exc!r}") from exc
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    assert not pending, f"{page}: the examples left tasks running: {pending}"


@pytest.mark.parametrize("page", _PAGES, ids=[str(p.relative_to(ROOT)) for p in _PAGES])
def test_examples_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write tokens.json
    _run_page(page, tmp_path, monkeypatch, request)


def test_every_page_with_examples_is_found() -> None:
    names = {str(page.relative_to(ROOT)) for page in _PAGES}
    assert "README.md" in names
    assert "docs/tutorial.md" in names
    runnable = [b for page in _PAGES for b in blocks(page) if b.mode not in ("not run", "fragment")]
    assert len(runnable) >= 20


# ------------------------------------------------------------------ command lines


def _command_lines() -> list[tuple[str, list[str]]]:
    return [found for page in pages() for found in command_lines(page)]


def test_every_command_line_on_the_site_parses() -> None:
    """The ``asynctoken`` commands shown in console blocks use commands and options that exist."""
    from asynctoken.cli import build_parser
    from asynctoken.testing.__main__ import _parser

    found = _command_lines()
    assert len(found) >= 10, found
    for where, words in found:
        if words[:3] == ["python", "-m", "asynctoken.testing"]:
            parser, args = _parser(), words[3:]
        else:
            parser = build_parser()
            args = words[1:] if words[0] == "asynctoken" else words[3:]
        code: int | str | None = 0
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()) as errors,
        ):
            try:
                parser.parse_args(args)
            except SystemExit as exit:  # --help exits 0, a bad option 2
                code = exit.code
        assert code == 0, f"{where}: {' '.join(words)}: {errors.getvalue()}"


# ------------------------------------------------------------------ the reference is complete


def _public_modules() -> list[str]:
    """asynctoken and its public submodules (not the command line: reference/cli.md)."""
    found = ["asynctoken"]
    for info in pkgutil.walk_packages(asynctoken.__path__, "asynctoken."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[1] in ("cli", "providers", "stores"):
            continue
        found.append(info.name)
    return found


def test_every_public_name_is_in_the_reference() -> None:
    reference = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "docs" / "reference").glob("*.md")
    )
    directives = set(re.findall(r"^::: ([\w.]+)$", reference, re.MULTILINE))
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        if module_name in directives:  # the whole module (e.g. the pytest plugin's fixtures)
            continue
        for name in getattr(module, "__all__", ()):
            candidates = {f"{module_name}.{name}"}
            if name in asynctoken.__all__:
                candidates.add(f"asynctoken.{name}")
            if not candidates & directives:
                missing.append(f"{module_name}.{name}")
    assert not missing, (
        "public names missing from the API reference; add a '::: <name>' line for each to a "
        f"page of docs/reference/: {missing}"
    )


# ------------------------------------------------------------------ examples in docstrings

_NOT_PYTHON = ("python ", "$ ", "pip ", "gunicorn ", "uvicorn ", "asynctoken ", "{")
_LITERAL = re.compile(r"::\n\n((?:[ \t]+\S.*\n|[ \t]*\n)+)")


def _docstring_examples() -> Iterator[tuple[str, str]]:
    seen: set[int] = set()
    for module_name in [*_public_modules(), "asynctoken.providers", "asynctoken.stores"]:
        module = importlib.import_module(module_name)
        objects: list[tuple[str, object]] = [(module_name, module)]
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            objects.append((f"{module_name}.{name}", value))
            if inspect.isclass(value):
                objects += [
                    (f"{module_name}.{name}.{attr}", member)
                    for attr, member in vars(value).items()
                    if not attr.startswith("_") or attr == "__init__"
                ]
        for where, value in objects:
            doc = inspect.getdoc(value) if not isinstance(value, str) else None
            if not doc or id(value) in seen:
                continue
            seen.add(id(value))
            for match in _LITERAL.finditer(doc + "\n"):
                code = textwrap.dedent(match.group(1))
                if not code.lstrip().startswith(_NOT_PYTHON) and "├──" not in code:
                    yield where, code


def test_docstring_examples_compile() -> None:
    examples = list(_docstring_examples())
    assert len(examples) >= 5, examples
    for where, code in examples:
        compile(code, where, "exec", flags=_FLAGS, dont_inherit=True)
