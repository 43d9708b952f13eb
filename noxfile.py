"""Developer sessions: ``nox -s tests``, ``nox -s lint typing``, ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
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
    session.install("-e", ".[redis,test,jwt]", "mypy==2.4.1", "types-cachetools==7.0.0.20260713")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark scenario and print the comparison table."""
    session.install("-e", ".[redis,bench,jwt]")
    if "--chart" in session.posargs:
        session.install("-e", ".[chart]")
    session.run("python", "-m", "benchmarks", *session.posargs)
