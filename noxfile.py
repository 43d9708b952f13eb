"""Developer sessions: ``nox -s tests``, ``lint typing``, ``docs``, ``bench`` and ``fuzz``."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite, Redis, multi-process and OpenID provider tests included."""
    session.install("-e", ".[redis,test,jwt]")
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=["3.12", "3.13"])
def core(session: nox.Session) -> None:
    """The manager's tests on newer Pythons, where refreshes start eagerly (3.12+)."""
    session.install("-e", ".[redis,test]")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_manager.py",
        "tests/test_middleware.py",
        "tests/test_many_tenants.py",
        "tests/test_manager_redis.py",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package and the public-API typing checks."""
    session.install(
        "-e",
        ".[redis,test,jwt]",
        "mypy==2.4.1",
        "types-cachetools==7.0.0.20260713",
        "types-requests==2.33.0.20261030",
    )
    session.run("mypy", "--strict")
    # The documentation's examples, as a user would type them (tests/docs_examples.py).
    examples = f"{session.create_tmp()}/docs-examples"
    session.run("python", "tests/docs_examples.py", "--write", examples, silent=True)
    session.run("mypy", "--strict", "--no-warn-unused-ignores", examples)


# The documentation site: MkDocs, Material, mkdocstrings (pinned: a new release must not break
# the strict build unannounced).
DOCS_REQUIREMENTS = (
    "mkdocs==1.6.1",
    "mkdocs-material==9.8.1",
    "mkdocstrings==1.0.8",
    "mkdocstrings-python==2.0.11",
    "mkdocs-autorefs==1.4.5",
    "griffelib==2.4.1",
    "pymdown-extensions==13.1.2",
    "markdown==3.11.3",
    "ruff==0.17.6",  # formats the signatures in the API reference
)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (``nox -s docs -- serve`` to serve it)."""
    session.install("-e", ".", *DOCS_REQUIREMENTS)
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session
def fuzz(session: nox.Session) -> None:
    """The rotation property (tests/test_fuzz_rotation.py) on many new random examples per store.

    ``ASYNCTOKEN_FUZZ_EXAMPLES`` says how many per store (300 by default; the test suite runs a
    fixed, smaller set). Failures are kept in ``.hypothesis/`` and replayed first next time.
    Prints the figures: examples, steps, token requests, answers drawn per class, losses, time.
    """
    session.install("-e", ".[redis,test,jwt]")
    examples = os.environ.get("ASYNCTOKEN_FUZZ_EXAMPLES", "300")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "-s",
        "tests/test_fuzz_rotation.py",
        *session.posargs,
        env={"ASYNCTOKEN_FUZZ_EXAMPLES": examples},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark scenario and print the comparison table."""
    session.install("-e", ".[redis,bench,jwt]")
    if "--chart" in session.posargs:
        session.install("-e", ".[chart]")
    session.run("python", "-m", "benchmarks", *session.posargs)
