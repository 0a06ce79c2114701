"""Suite-wide settings: hypothesis runs without wall-clock deadlines (the CI machine
has two cores shared with simulations; speed targets live in bench/, not in tests).
Also the small file systems the full-disk tests fill (node and integration alike)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("shardset", deadline=None, print_blob=True)
settings.load_profile("shardset")


def fill(directory: Path, leave: int = 0) -> Path:
    """Take every free byte of the file system holding `directory`, but `leave`."""
    path = directory / "ballast"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    os.truncate(path, max(0, path.stat().st_size - leave))
    return path


@pytest.fixture
def fill_disk() -> Callable[..., Path]:
    """`fill(directory, leave=0)`: a ballast file taking the free space of its file system."""
    return fill


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """`mount(directory, size)`: a small tmpfs there (root only), unmounted at teardown,
    after the fixtures that use it (a node on it is stopped first)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def mount(directory: Path, size: str) -> Path:
        directory.mkdir(exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
        subprocess.run(cmd, check=True)
        mounted.append(directory)
        return directory

    try:
        yield mount
    finally:
        for directory in reversed(mounted):
            subprocess.run(["umount", "-l", str(directory)], check=False)
