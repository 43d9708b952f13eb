"""Griffe extension: read asynctoken's reST-flavoured docstrings as mkdocstrings Markdown.

The code's docstrings are Google style with Sphinx roles (``:class:`Margins```) and reST
literal blocks (``Example::`` + an indented block). This extension rewrites, once the package
is loaded:

* a role whose target resolves inside ``asynctoken`` into an autorefs cross-reference, so a
  reference to something the site does not document fails ``mkdocs build --strict``;
* a role whose target is outside ``asynctoken`` (``asyncio.Task``, ``aiohttp.ClientSession``)
  into inline code: the build runs offline, without other projects' inventories;
* ``text::`` + an indented block into ``text:`` + a fenced code block (``python`` when the block
  parses as Python, else ``text``).
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`<>]+?)`")
_SECTION_TITLES = {"example", "examples", "note", "notes", "warning", "warnings", "usage"}


def _resolve(obj: griffe.Object, target: str) -> str | None:
    target = target.lstrip(".")
    first, _, rest = target.partition(".")
    # ``module.name`` or ``Class.member``: a name of the module's own scope; else the nearest
    # class or module around ``obj``.
    nearest = obj if obj.is_class or obj.is_module else obj.parent
    scope: griffe.Object | None = obj.module if rest else nearest
    while scope is not None:
        try:
            path = scope.resolve(first)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return None


def _is_private(path: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in path.split("."))


def _roles(obj: griffe.Object, text: str, public: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2).strip()
        shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        if match.group(0).startswith((":meth:", ":func:")) and not shown.endswith(")"):
            shown += "()"
        path = _resolve(obj, target)
        if path is None and target.startswith("asynctoken."):
            path = target
        if path is not None and path.split(".", 1)[0] == "asynctoken":
            # Link to the name the site documents it under (``asynctoken.Token``, not
            # ``asynctoken._token.Token``); an object with no public name is plain code.
            canonical = _canonical(obj, path)
            public_path = _public_name(canonical, public)
            if public_path is not None and _undocumented_attribute(obj, canonical):
                # Described in its class's ``Attributes:`` section, which is on the class's
                # entry: link there.
                public_path = public_path.rsplit(".", 1)[0]
            if public_path is None and _is_private(path):
                return f"`{shown}`"
            return f"[`{shown}`][{public_path or path}]"
        return f"`{shown}`"

    return _ROLE.sub(replace, text)


def _literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.rstrip()
        if not stripped.endswith("::") or stripped.endswith(":::"):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        block_end = j
        while block_end < len(lines) and (
            not lines[block_end].strip()
            or len(lines[block_end]) - len(lines[block_end].lstrip()) > indent
        ):
            block_end += 1
        while block_end > j and not lines[block_end - 1].strip():
            block_end -= 1
        if block_end == j:  # no indented block follows: leave the line alone
            out.append(line)
            i += 1
            continue
        intro = stripped[:-1].rstrip()
        if intro.strip().lower().rstrip(":") in _SECTION_TITLES:
            intro = " " * indent + f"**{intro.strip().rstrip(':')}:**"
        elif intro.strip():
            intro = intro if intro.endswith(":") else intro + ":"
        code = textwrap.dedent("\n".join(lines[j:block_end]))
        try:
            ast.parse(code)
            language = "python"
        except SyntaxError:
            language = "text"
        pad = " " * indent
        if intro.strip():
            out.extend([intro, ""])
        out.append(f"{pad}```{language}")
        out.extend(pad + code_line if code_line else "" for code_line in code.splitlines())
        out.append(f"{pad}```")
        i = block_end
    return "\n".join(out)


def _undocumented_attribute(obj: griffe.Object, path: str) -> bool:
    try:
        found = obj.modules_collection[path]
    except (KeyError, ValueError):
        return False
    return bool(found.is_attribute and found.docstring is None and found.parent.is_class)


def _canonical(obj: griffe.Object, path: str) -> str:
    """The path where ``path`` is defined, following aliases (and a member's owner)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = obj.modules_collection[".".join(parts[:cut])]
        except (KeyError, ValueError):
            continue
        try:
            target = found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path
        return ".".join([target, *parts[cut:]])
    return path


def _public_name(path: str, public: dict[str, str]) -> str | None:
    """``asynctoken._token.Token.extra`` -> ``asynctoken.Token.extra`` when exported."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in public:
            found = ".".join([public[prefix], *parts[cut:]])
            return None if _is_private(found) else found
    return None


def _public_names(obj: griffe.Object, public: dict[str, str]) -> None:
    """Map canonical paths to the public paths they are exported under."""
    # Names a module exports win over the same objects seen again in its submodules.
    submodules = []
    for name, member in obj.members.items():
        if name.startswith("_"):
            continue
        path = f"{obj.path}.{name}"
        if member.is_alias:
            try:
                public.setdefault(member.final_target.path, path)  # type: ignore[union-attr]
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
        elif member.is_module:
            public.setdefault(path, path)
            submodules.append(member)
        else:
            public.setdefault(path, path)
    for module in submodules:
        _public_names(module, public)


class ReSTDocstrings(griffe.Extension):
    """Rewrite roles and literal blocks of every docstring once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        public: dict[str, str] = {}
        _public_names(pkg, public)
        self._walk(pkg, set(), public)

    def _walk(self, obj: griffe.Object, seen: set[str], public: dict[str, str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _roles(obj, _literal_blocks(obj.docstring.value), public)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen, public)  # type: ignore[arg-type]
