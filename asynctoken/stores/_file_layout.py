"""The text of a FileStore file: one JSON object, one record per line.

The file is one JSON object, readable by any JSON parser (and by older asynctoken versions)::

    {"format": "asynctoken.filestore", "version": 1, "generation": "9f…", "credentials": {
    "tenant-1": {"access_token": "…", …},
    "tenant-2": {"v": 1, "sealed": "A256GCM", "kid": "2026-12", "data": "…"}
    }}

``version`` is the major version: a reader accepts any file of its own major version and ignores
fields it does not know (top-level and per record), and refuses a newer major version rather than
guess. A write keeps unknown top-level fields and every record it does not touch unchanged, so an
older asynctoken never drops what a newer one added.

The layout is chosen for cost, not for looks: each record is kept as its JSON text, so a write
re-encodes only the records it changes, and the text is written and read a line at a time (short
steps that let the event loop's thread run in between, instead of one long JSON call holding the
GIL). ``generation`` is random per write: together with the file's stat identity, the first line
tells whether the file is still the version this process last read or wrote, without reading the
rest. Any other layout of the same JSON (an older version's indented file, a hand edit) is read
with a plain JSON parse.
"""

from __future__ import annotations

import json
import json.decoder
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FORMAT",
    "VERSION",
    "CorruptFileError",
    "Layout",
    "Stamp",
    "empty_layout",
    "parse",
    "render",
]

FORMAT = "asynctoken.filestore"
VERSION = 1

#: What identifies one version of the file: (device, inode, size, mtime_ns, ctime_ns).
Stamp = tuple[int, int, int, int, int]

_HEADER_END = ', "credentials": {'
_FOOTER = "}}"
_CHUNK = 512  # records per write() call
# The JSON string scanner (C-accelerated): the key at the start of a record line.
_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


class CorruptFileError(Exception):
    """The file is not a usable asynctoken file; ``reason`` says why, without quoting content."""

    def __init__(self, reason: str, raw: bytes, stamp: Stamp) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.stamp = stamp


class NewerVersionError(Exception):
    """The file is of a newer major version (``version`` holds it)."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


@dataclass(frozen=True, slots=True)
class Layout:
    """One version of the file, parsed.

    Attributes:
        top: the top-level fields other than ``credentials``, unknown ones included.
        records: each record's JSON text by key; records are decoded only when used, so one bad
            record does not make every other credential unreadable.
        stamp: the stat identity of the version, or ``None`` for a missing file.
        first_line: the file's first line when it carries a ``generation`` (see the module
            documentation), else ``None``.
    """

    top: dict[str, Any]
    records: dict[str, str]
    stamp: Stamp | None
    first_line: bytes | None


def empty_layout() -> Layout:
    """The content of a store whose file does not exist yet."""
    return Layout(
        top={"format": FORMAT, "version": VERSION}, records={}, stamp=None, first_line=None
    )


def parse(raw: bytes, stamp: Stamp) -> Layout:
    """Parse one version of the file.

    Raises:
        CorruptFileError: not an asynctoken file (not JSON, wrong ``format``, …).
        NewerVersionError: a newer major version.
    """
    if not raw.strip():
        raise CorruptFileError("the file is empty (truncated?)", raw, stamp)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError("the file is not UTF-8 text", raw, stamp) from None
    layout = _parse_lines(text, stamp)
    if layout is None:
        layout = _parse_whole(text, raw, stamp)
    _check_top(layout.top, raw, stamp)
    return layout


def render(top: dict[str, Any], records: dict[str, str]) -> tuple[bytes, Iterator[bytes]]:
    """The first line of a new version (with a new ``generation``) and the rest of its bytes,
    in chunks.

    Record texts are written as they are; the header is ASCII with ``\\u`` escapes.
    """
    header = {"format": FORMAT, "version": VERSION, "generation": secrets.token_hex(16)}
    header.update((k, v) for k, v in top.items() if k not in header and k != "credentials")
    first = (json.dumps(header)[:-1] + _HEADER_END).encode("ascii")
    return first, _body(records)


def _body(records: dict[str, str]) -> Iterator[bytes]:
    items = list(records.items())
    yield b"\n"
    for start in range(0, len(items), _CHUNK):
        lines = [f"{json.dumps(key)}: {text}" for key, text in items[start : start + _CHUNK]]
        last = start + _CHUNK >= len(items)
        yield (",\n".join(lines) + ("\n" if last else ",\n")).encode("utf-8")
    yield (_FOOTER + "\n").encode("ascii")


def _parse_lines(text: str, stamp: Stamp) -> Layout | None:
    """The layout this module writes, read a line at a time; ``None`` for anything else."""
    lines = text.split("\n")
    end = len(lines) - 1
    if end > 0 and not lines[end]:
        end -= 1
    if end < 1 or lines[end] != _FOOTER or not lines[0].endswith(_HEADER_END):
        return None
    try:
        top = json.loads(lines[0][: -len(_HEADER_END)] + "}")
    except ValueError:
        return None
    if not isinstance(top, dict) or "generation" not in top:
        return None
    records: dict[str, str] = {}
    last = end - 1
    for number in range(1, end):
        line = lines[number]
        if number < last:
            if not line.endswith(","):
                return None
            line = line[:-1]
        if not line.startswith('"'):
            return None
        try:
            key, position = _scanstring(line, 1)
            value = line[position + 2 :]
            if line[position : position + 2] != ": ":
                return None
            json.loads(value)  # only valid JSON is written back
        except ValueError:
            return None
        records[key] = value
    return Layout(top=top, records=records, stamp=stamp, first_line=lines[0].encode("utf-8"))


def _parse_whole(text: str, raw: bytes, stamp: Stamp) -> Layout:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:  # the message names a position, never the content
        reason = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated?)"
        raise CorruptFileError(reason, raw, stamp) from None
    if not isinstance(whole, dict):
        raise CorruptFileError("the top level is not a JSON object", raw, stamp)
    credentials = whole.pop("credentials", None)
    if not isinstance(credentials, dict):
        _check_top(whole, raw, stamp)  # a foreign file says so first
        raise CorruptFileError("'credentials' is missing or not a JSON object", raw, stamp)
    records = {key: json.dumps(value, separators=(",", ":")) for key, value in credentials.items()}
    return Layout(top=whole, records=records, stamp=stamp, first_line=None)


def _check_top(top: dict[str, Any], raw: bytes, stamp: Stamp) -> None:
    if top.get("format") != FORMAT:
        raise CorruptFileError(f"'format' is not {FORMAT!r}: not an asynctoken file", raw, stamp)
    version = top.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptFileError("'version' is missing or not a positive integer", raw, stamp)
    if version > VERSION:
        raise NewerVersionError(version)
