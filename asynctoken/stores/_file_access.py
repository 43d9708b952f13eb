"""Who may use a :class:`~asynctoken.stores.FileStore`'s files: owner, group and mode.

A new token file is private (``0600``, its new directories ``0700``). An existing one keeps the
owner, group and mode it was given: two service accounts that share it through a group, or an
operator who runs the ``asynctoken`` command as root on an application's file, must not take the
application's access away by rewriting it. The lock files beside it follow the token file too,
so that everyone who may use the file may also take its locks.

Everything here is synchronous and runs in worker threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass

__all__ = ["NEW_DIRECTORY_MODE", "NEW_FILE_MODE", "Access", "access_of", "adopt", "give_to"]

_log = logging.getLogger("asynctoken.stores")

NEW_FILE_MODE = 0o600
NEW_DIRECTORY_MODE = 0o700

_GROUP = stat.S_IRWXG


@dataclass(frozen=True, slots=True)
class Access:
    """Owner, group and permission bits of an existing token file."""

    uid: int
    gid: int
    mode: int

    @property
    def shared_with_group(self) -> bool:
        """Whether the file's group may use it at all."""
        return bool(self.mode & _GROUP)

    @property
    def lock_file_mode(self) -> int:
        """Locks need read-write access from everyone in the group who may use the file."""
        return NEW_FILE_MODE | (0o060 if self.shared_with_group else 0)

    @property
    def lock_directory_mode(self) -> int:
        """The directory of the per-credential lock files."""
        return NEW_DIRECTORY_MODE | (0o070 if self.shared_with_group else 0)

    @property
    def is_private_to_this_process(self) -> bool:
        """Owned by this process's user and group, with no group access: nothing to adopt."""
        return self.uid == os.geteuid() and self.gid == os.getegid() and not self.shared_with_group


def access_of(path: str) -> Access | None:
    """The access of the file at ``path``, or ``None`` if it does not exist (or cannot be seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Access(uid=st.st_uid, gid=st.st_gid, mode=stat.S_IMODE(st.st_mode) & 0o777)


def give_to(fd: int, access: Access, path: str) -> None:
    """Give the new version of a file (open as ``fd``, still ``0600``) the access of the old one.

    The owner is kept when this process may change it (root); the group whenever this process
    belongs to it. If the group cannot be kept, the group permission bits are dropped rather than
    handed to another group.

    Raises:
        OSError: ``fchmod`` failed.
    """
    current = os.fstat(fd)
    mode = access.mode
    if current.st_uid != access.uid and _chown(fd, access.uid, access.gid):
        current = os.fstat(fd)
    if current.st_gid != access.gid and not _chown(fd, -1, access.gid):
        if mode & _GROUP:
            _log.warning(
                "%s: cannot keep its group %d (this process is not a member): the rewritten "
                "file gets no group permissions",
                path,
                access.gid,
            )
        mode &= ~_GROUP
    os.fchmod(fd, mode)


def adopt(path: str, access: Access, mode: int) -> None:
    """Best effort: give a lock file or directory the token file's owner and group, and ``mode``.

    A lock file created by root (the ``asynctoken`` command run by an operator) would otherwise
    lock the application out of its own store.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        return  # never follow a link planted where a lock file belongs
    is_root = os.geteuid() == 0
    if (st.st_uid != access.uid and is_root) or st.st_gid != access.gid:
        with contextlib.suppress(OSError):
            os.lchown(path, access.uid if is_root else -1, access.gid)
    if stat.S_IMODE(st.st_mode) != mode and (is_root or st.st_uid == os.geteuid()):
        with contextlib.suppress(OSError):
            os.chmod(path, mode)


def _chown(fd: int, uid: int, gid: int) -> bool:
    try:
        os.fchown(fd, uid, gid)
    except PermissionError:
        return False
    return True
