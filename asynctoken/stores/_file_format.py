"""The blocking I/O behind :class:`~asynctoken.stores.FileStore`: read, replace atomically, keep
damaged files aside.

Everything here is synchronous and runs in a worker thread, never on the event loop. What the
file holds, and how it is laid out, is in :mod:`._file_layout`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from typing import Any

from .._errors import StoreError
from ._file_access import NEW_FILE_MODE, access_of, give_to
from ._file_layout import VERSION, Layout, NewerVersionError, Stamp, empty_layout, parse, render

__all__ = [
    "copy_aside",
    "is_current",
    "read_document",
    "remove_stale_temp_files",
    "stamp_of",
    "write_document",
]

# O_BINARY matters on Windows only; O_CLOEXEC keeps the descriptors out of child processes.
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_NO_DIRECTORY_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})

# Without a first line to compare, a parsed file may be reused only once its mtime is this old.
# A file replaced within the same timestamp tick (coarse kernel clocks, 1-2 s on some
# filesystems) with a file of the same size and a recycled inode number would otherwise look
# unchanged: the "racily clean" problem of git.
_SETTLE_NS = 3_000_000_000


def stamp_of(st: os.stat_result) -> Stamp:
    """The identity of the file version described by ``st``."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def is_current(path: str, layout: Layout) -> bool:
    """Whether the file at ``path`` is still the version ``layout`` was read from or written as.

    Its stat identity must match, and either the version is old enough that any later write
    would change that identity, or the file's first line (with its random ``generation``) is the
    same. One ``stat``, and for a recent version one short read.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return layout.stamp is None
    except OSError:
        return False
    stamp = stamp_of(st)
    if layout.stamp is None or stamp != layout.stamp:
        return False
    if time.time_ns() - max(stamp[3], stamp[4]) > _SETTLE_NS:
        return True
    if layout.first_line is None:
        return False
    try:
        with open(path, "rb") as file:
            return file.read(len(layout.first_line) + 1) == layout.first_line + b"\n"
    except OSError:
        return False


def read_document(path: str) -> Layout:
    """Read and parse the file at ``path``; a missing file is an empty store.

    Raises:
        CorruptFileError: the content is not an asynctoken file (not JSON, wrong ``format``, …).
        StoreError: the file is from a newer major version, or cannot be read at all.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_BINARY | _O_CLOEXEC)
    except FileNotFoundError:
        return empty_layout()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", location=path) from exc
    try:
        with os.fdopen(fd, "rb") as file:
            stamp = stamp_of(os.fstat(file.fileno()))
            raw = file.read()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}", location=path) from exc
    try:
        return parse(raw, stamp)
    except NewerVersionError as exc:
        raise StoreError(
            f"{path} was written by a newer asynctoken (file format version {exc.version}; "
            f"this version reads {VERSION}): upgrade asynctoken to use it",
            location=path,
        ) from None


def write_document(path: str, top: dict[str, Any], records: dict[str, str]) -> Layout:
    """Replace the file at ``path`` atomically and durably; return the version written.

    The bytes go to a new ``0600`` file in the same directory, which is flushed, fsync'd and
    renamed over ``path``; the directory is then fsync'd so that the rename survives a power loss.
    A reader sees either the old file or the new one, never a mix, and a crash leaves at worst an
    orphaned temporary file (removed by :func:`remove_stale_temp_files`). When ``path`` exists,
    the new file first gets its owner (if permitted), group and mode (see :mod:`._file_access`).
    The caller holds the store-wide write lock, so the version written is still current when the
    stat after the rename identifies it.
    """
    first_line, body = render(top, records)
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC | _O_NOFOLLOW
    access = access_of(path)
    try:
        fd = os.open(temp, flags, NEW_FILE_MODE)
        with os.fdopen(fd, "wb") as file:
            if access is not None:
                give_to(file.fileno(), access, path)
            file.write(first_line)
            for chunk in body:  # short steps: the event loop's thread gets the GIL in between
                file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
        stamp = stamp_of(os.stat(path))
    except OSError as exc:
        _unlink_quietly(temp)
        raise StoreError(f"cannot write {path}: {exc.strerror}", location=path) from exc
    except BaseException:
        _unlink_quietly(temp)
        raise
    _fsync_directory(directory, path)
    return Layout(top=dict(top), records=records, stamp=stamp, first_line=first_line)


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
