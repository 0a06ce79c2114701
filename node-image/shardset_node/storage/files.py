"""Durable file writes: the one atomic replace and the fsync helpers the node's storage uses.

A file replaced by rename survives a power loss only if its bytes reach the disk before
the rename (fsync the file) and the rename itself does too (fsync the directory, whose
entry the rename changed). Every side file and snapshot file is written through
:func:`atomic_write` so each has that guarantee, or none when the node runs without fsync.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, TypeVar

__all__ = ["atomic_replace", "atomic_write", "fsync_dir", "fsync_file", "temporary_name"]

T = TypeVar("T")


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries durable: a rename or a new file's name is only
    durable once the directory is."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's bytes durable when no descriptor to it is open any more."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Where :func:`atomic_write` writes before the rename (left behind only by a crash)."""
    return path.with_name(path.name + ".tmp")


def atomic_write(path: Path, write: Callable[[BinaryIO], T], *, fsync: bool = True) -> T:
    """Replace ``path`` all or nothing with what ``write`` writes to the file it is given
    (it may seek, e.g. to write a header last); returns what ``write`` returns.

    Temp file in the same directory, flush and fsync it, rename over ``path``, fsync the
    directory. A reader sees the old file or the whole new one, never a part; with
    ``fsync`` the new one also survives a power loss once this returns.
    """
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            result = write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)
    return result


def atomic_replace(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` all or nothing with ``data`` (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data), fsync=fsync)
