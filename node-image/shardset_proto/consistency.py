"""Read consistency modes: the names node, client and operator agree on.

What each mode guarantees is in docs/consistency.md; the rules that decide whether a
replica may serve a read live in the node (shardset_node.consistency).
"""

from __future__ import annotations

from typing import Literal, get_args

ReadMode = Literal["linearizable", "lease", "bounded", "session", "eventual"]
MODES: tuple[str, ...] = get_args(ReadMode)
# Served by the shard's leader only; the other modes may be served by any replica.
LEADER_MODES = frozenset({"linearizable", "lease"})
DEFAULT_MODE = "linearizable"
MAX_STALENESS_LIMIT_MS = 3_600_000  # an hour: a bound beyond it is a typo
