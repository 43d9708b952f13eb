"""The public API: ``__all__`` is complete, sorted, importable and documented."""

from __future__ import annotations

import inspect

import asynctoken


def test_all_is_sorted_and_importable() -> None:
    assert asynctoken.__all__ == sorted(asynctoken.__all__)
    for name in asynctoken.__all__:
        assert getattr(asynctoken, name) is not None


def test_every_public_module_member_is_exported() -> None:
    exported = set(asynctoken.__all__)
    public = {
        name
        for name, value in vars(asynctoken).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public - {"TYPE_CHECKING", "Any"} <= exported


def test_issue_contract_names() -> None:
    from asynctoken import (  # noqa: F401 - the names users are promised
        ERPeasyProvider,
        InvalidGrantError,
        KeliwebProvider,
        MemoryStore,
        OAuth2Provider,
        Token,
        TokenError,
        TokenManager,
    )

    assert issubclass(InvalidGrantError, TokenError)


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in asynctoken.__all__:
        value = getattr(asynctoken, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name
            for attr, member in vars(value).items():
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                assert inspect.getdoc(member), f"{name}.{attr}"
