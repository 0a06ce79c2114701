"""The read consistency in force, for status (pure): the setting every node reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ConsistencyMode, ConsistencyStatus


def consistency_status(
    desired: ReadSetting, reports: Mapping[int, ReadSetting | None], node_ids: list[int]
) -> ConsistencyStatus:
    """The mode in force is the one ALL nodes report; absent while they differ."""
    seen = [reports.get(n) for n in node_ids]
    applied = sum(1 for r in seen if r == desired)
    common = seen[0] if seen and all(r == seen[0] for r in seen) else None
    if common is None or common.mode not in get_args(ConsistencyMode):
        return ConsistencyStatus(nodes_applied=applied)
    return ConsistencyStatus.model_validate(
        {"mode": common.mode, "maxStalenessMs": common.max_staleness_ms, "nodesApplied": applied}
    )
