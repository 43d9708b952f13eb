"""The on-disk format of :class:`~asynctoken.stores.FileStore` and the blocking I/O behind it.

Everything here is synchronous and runs in a worker thread, never on the event loop. The file is
one JSON object::

    {"format": "asynctoken.filestore", "version": 1, "credentials": {key: Token.to_dict()}}

``version`` is the major version: a reader accepts any file of its own major version and ignores
fields it does not know (top-level and per record), and refuses a newer major version rather than
guess. A write keeps unknown top-level fields and every record it does not touch unchanged, so an
older asynctoken never drops what a newer one added.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import StoreError
from ._file_access import NEW_FILE_MODE, access_of, give_to

__all__ = [
    "FORMAT",
    "VERSION",
    "CorruptFileError",
    "Document",
    "Stamp",
    "copy_aside",
    "is_settled",
    "read_document",
    "remove_stale_temp_files",
    "write_document",
]

FORMAT = "asynctoken.filestore"
VERSION = 1

# O_BINARY matters on Windows only; O_CLOEXEC keeps the descriptors out of child processes.
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_NO_DIRECTORY_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})

# A parsed file may be cached only once its mtime is this old. A file replaced within the same
# timestamp tick (coarse kernel clocks, 1-2 s on some filesystems) with a file of the same size
# and a recycled inode number would otherwise look unchanged: the "racily clean" problem of git.
_SETTLE_NS = 3_000_000_000

#: What identifies one version of the file: (device, inode, size, mtime_ns, ctime_ns).
Stamp = tuple[int, int, int, int, int]


class CorruptFileError(Exception):
    """The file is not a usable asynctoken file; ``reason`` says why, without quoting content."""

    def __init__(self, reason: str, raw: bytes, stamp: Stamp) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.stamp = stamp


@dataclass(frozen=True, slots=True)
class Document:
    """One parsed version of the file.

    Attributes:
        top: the whole top-level object, unknown fields included.
        credentials: the raw records by key (``top["credentials"]``); records are validated only
            when used, so one bad record does not make every other credential unreadable.
        stamp: the stat identity of the version read, or ``None`` for a missing file.
    """

    top: dict[str, Any]
    credentials: dict[str, Any]
    stamp: Stamp | None


def empty_document() -> Document:
    """The document of a store whose file does not exist yet."""
    credentials: dict[str, Any] = {}
    top = {"format": FORMAT, "version": VERSION, "credentials": credentials}
    return Document(top=top, credentials=credentials, stamp=None)


def stamp_of(st: os.stat_result) -> Stamp:
    """The identity of the file version described by ``st``."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def is_settled(stamp: Stamp) -> bool:
    """Whether a version is old enough that any later write is sure to change its stamp."""
    return time.time_ns() - max(stamp[3], stamp[4]) > _SETTLE_NS


def read_document(path: str) -> Document:
    """Read and parse the file at ``path``; a missing file is an empty store.

    Raises:
        CorruptFileError: the content is not an asynctoken file (not JSON, wrong ``format``, …).
        StoreError: the file is from a newer major version, or cannot be read at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_CLOEXEC)
    except FileNotFoundError:
        return empty_document()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", location=path) from exc
    try:
        with os.fdopen(fd, "rb") as file:
            stamp = stamp_of(os.fstat(file.fileno()))
            raw = file.read()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", location=path) from exc
    return _parse(raw, stamp, path)


def _parse(raw: bytes, stamp: Stamp, path: str) -> Document:
    if not raw.strip():
        raise CorruptFileError("the file is empty (truncated?)", raw, stamp)
    try:
        top = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CorruptFileError("the file is not UTF-8 text", raw, stamp) from None
    except json.JSONDecodeError as exc:  # the message names a position, never the content
        reason = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated?)"
        raise CorruptFileError(reason, raw, stamp) from None
    if not isinstance(top, dict):
        raise CorruptFileError("the top level is not a JSON object", raw, stamp)
    if top.get("format") != FORMAT:
        raise CorruptFileError(f"'format' is not {FORMAT!r}: not an asynctoken file", raw, stamp)
    version = top.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CorruptFileError("'version' is missing or not a positive integer", raw, stamp)
    if version > VERSION:
        raise StoreError(
            f"{path} was written by a newer asynctoken (file format version {version}; this "
            f"version reads {VERSION}): upgrade asynctoken to use it",
            location=path,
        )
    credentials = top.get("credentials")
    if not isinstance(credentials, dict):
        raise CorruptFileError("'credentials' is missing or not a JSON object", raw, stamp)
    return Document(top=top, credentials=credentials, stamp=stamp)


def write_document(path: str, top: Mapping[str, Any]) -> None:
    """Replace the file at ``path`` atomically and durably.

    The bytes go to a new ``0600`` file in the same directory, which is flushed, fsync'd and
    renamed over ``path``; the directory is then fsync'd so that the rename survives a power loss.
    A reader sees either the old file or the new one, never a mix, and a crash leaves at worst an
    orphaned temporary file (removed by :func:`remove_stale_temp_files`). When ``path`` exists,
    the new file first gets its owner (if permitted), group and mode (see :mod:`._file_access`).
    """
    # ASCII with \u escapes: any str (even an unpaired surrogate) round-trips, always valid UTF-8.
    data = json.dumps(top, indent=1, allow_nan=False).encode("ascii") + b"\n"
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
    access = access_of(path)
    try:
        fd = os.open(temp, flags, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            if access is not None:
                give_to(file.fileno(), access, path)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as exc:
        _unlink_quietly(temp)
        raise StoreError(f"cannot write {path}: {exc.strerror}", location=path) from exc
    except BaseException:
        _unlink_quietly(temp)
        raise
    _fsync_directory(directory, path)


def remove_stale_temp_files(path: str) -> None:
    """Delete temporary files left by writers that crashed mid-write.

    Only safe under the store-wide write lock: every live writer holds it while its temporary file
    exists, so any temporary file seen by the holder belongs to a dead writer.
    """
    directory, name = os.path.split(path)
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    prefix = f".{name}."
    for entry in entries:
        if entry.startswith(prefix) and entry.endswith(".tmp"):
            _unlink_quietly(os.path.join(directory, entry))


def copy_aside(path: str, raw: bytes) -> str:
    """Save the bytes of a bad file next to it, once, and return the copy's path.

    An identical earlier copy (from this or another process) is reused, so that a corrupt file read
    over and over does not fill the disk. The copy is ``0600`` like the file.
    """
    directory, name = os.path.split(path)
    prefix = f"{name}.corrupt-"
    try:
        entries = sorted(e for e in os.listdir(directory) if e.startswith(prefix))
    except OSError:
        entries = []
    for entry in entries:
        candidate = os.path.join(directory, entry)
        try:
            if os.path.getsize(candidate) == len(raw):
                with open(candidate, "rb") as file:
                    if file.read() == raw:
                        return candidate
        except OSError:
            continue
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
    for attempt in range(100):
        candidate = f"{path}.corrupt-{stamp}" + (f"-{attempt}" if attempt else "")
        try:
            fd = os.open(candidate, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as file:
            file.write(raw)
            file.flush()
            os.fsync(file.fileno())
        return candidate
    raise FileExistsError(f"too many copies named {path}.corrupt-{stamp}*")


def _fsync_directory(directory: str, path: str) -> None:
    if os.name == "nt":  # pragma: no cover - directories cannot be opened on Windows
        return
    try:
        fd = os.open(directory or ".", os.O_RDONLY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename itself has happened.
        if exc.errno not in _NO_DIRECTORY_FSYNC:
            message = f"cannot sync the directory of {path}: {exc.strerror}"
            raise StoreError(message, location=path) from exc


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
