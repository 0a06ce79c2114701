"""Telling a full disk from other storage failures, and the node's free space.

A full file system is an expected, recoverable condition (the node refuses writes and
retries until space returns, see replication/host.py); any other write or sync failure
is not (the node stops: after a failed fsync the page cache's state is unknown). This
module holds the one classification every storage path uses.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DiskFull", "DiskSpace", "disk_space", "is_disk_full"]

# ENOSPC: no space left on the device; EDQUOT: the user's quota is used up. Both clear
# once space is freed, with nothing lost that was not refused.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = "database or disk is full"


class DiskFull(Exception):
    """A write found no space; nothing of it counts as written. Retried later."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: no space left on the device ({cause})")
        self.what = what
        self.cause = cause


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) says the disk is full."""
    seen = 0
    while exc is not None and seen < 8:  # bounded: a cause chain may loop
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or _SQLITE_FULL in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@dataclass(frozen=True)
class DiskSpace:
    free_bytes: int
    total_bytes: int


def disk_space(path: Path) -> DiskSpace | None:
    """Free (for this user) and total bytes of the file system holding `path`."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskSpace(free_bytes=st.f_bavail * st.f_frsize, total_bytes=st.f_blocks * st.f_frsize)
