"""Suite-wide settings: hypothesis runs without wall-clock deadlines (the CI machine
has two cores shared with simulations; speed targets live in bench/, not in tests).
Also the small file systems the full-disk tests fill (node and integration alike)."""

from __future__ import annotations

import errno
import os
import struct
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


KV_ROOT = 2  # the kv table is the schema's first: its b-tree's root page


def kv_leaf_pages(path: Path) -> tuple[int, list[int]]:
    """(page size, the kv table's leaf pages, in key order), parsed from the file."""
    raw = path.read_bytes()
    (size,) = struct.unpack_from(">H", raw, 16)
    size = 65536 if size == 1 else size

    def walk(page: int) -> list[int]:
        off = (page - 1) * size + (100 if page == 1 else 0)
        kind, cells = raw[off], struct.unpack_from(">H", raw, off + 3)[0]
        if kind in (0x0A, 0x0D):  # index / table leaf
            return [page]
        assert kind in (0x02, 0x05), f"page {page} has type {kind:#x}"
        ptrs = struct.unpack_from(f">{cells}H", raw, off + 12)
        base = (page - 1) * size
        children = [struct.unpack_from(">I", raw, base + p)[0] for p in ptrs]
        children.append(struct.unpack_from(">I", raw, off + 8)[0])  # the right-most
        return [leaf for c in children for leaf in walk(c)]

    return size, walk(KV_ROOT)


def damage_a_leaf(db_file: Path) -> int:
    """Overwrite the type byte of a kv leaf page in the middle of `db_file` with one no
    page has (as a flipped byte would); returns that page's number."""
    size, leaves = kv_leaf_pages(db_file)
    assert len(leaves) >= 3, f"too few kv pages to damage one in the middle: {leaves}"
    page = leaves[len(leaves) // 2]
    with db_file.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\x00")
    return page


@pytest.fixture
def damage_leaf() -> Callable[[Path], int]:
    """`damage_a_leaf(kv.sqlite3)`: one kv leaf page damaged; its number."""
    return damage_a_leaf
