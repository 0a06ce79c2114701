"""A data directory whose Raft log is corrupt in the middle: kept aside, never served.

A damaged record with intact records after it is not a torn write (storage/wal.py):
synced, acknowledged state is gone and nothing on this node can say which. Such a
node must never vote or serve with the log it has left, so at startup
(`shardset_node.main`) the whole data directory is moved into
``corrupt-<UTC time>/`` inside it (kept for forensics, never read again) and the
node starts EMPTY. In a store that already exists (the operator's store-created
marker) an empty node takes the lost-volume path: origin "rejoin", it hosts no group
and votes in none until the operator re-adds its replicas, learner first, from their
leaders (`shardset_node.core.Node._origin`). Without the marker the node cannot know
the store exists, so it stops instead with EXIT_STORAGE_CORRUPT.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from shardset_node.storage.files import fsync_dir

__all__ = ["EXIT_STORAGE_CORRUPT", "QUARANTINE_PREFIX", "quarantine_data_dir"]

# The process exit code for a corrupt log it could not set aside (docs/operations.md).
EXIT_STORAGE_CORRUPT = 3
QUARANTINE_PREFIX = "corrupt-"


def quarantine_data_dir(data_dir: Path) -> Path:
    """Move everything in `data_dir` (earlier quarantines excepted) into a new
    ``corrupt-<time>`` directory there; returns it. Renames only: nothing is copied
    or deleted, and the move is durable before the node starts again."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = data_dir / f"{QUARANTINE_PREFIX}{stamp}"
    n = 0
    while target.exists():
        n += 1
        target = data_dir / f"{QUARANTINE_PREFIX}{stamp}-{n}"
    target.mkdir()
    for entry in sorted(data_dir.iterdir()):
        if entry.name.startswith(QUARANTINE_PREFIX):
            continue
        os.replace(entry, target / entry.name)
    fsync_dir(target)
    fsync_dir(data_dir)
    return target
