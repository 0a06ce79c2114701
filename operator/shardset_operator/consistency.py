"""Read consistency: the desired setting, what nodes report, and who still needs it.

Nodes start in the mode of the ConfigMap (env vars from configMapKeyRef, so changing
the mode never changes the pod template and never restarts a pod) and are switched
live through POST /v1/admin/consistency. "No bound" is an empty maxStalenessMs in the
ConfigMap (the key must exist for the env var to resolve, and the node reads an empty
SHARDSET_MAX_STALENESS_MS as unset; it refuses 0); the API and the admin endpoint say
it with null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

from shardset_operator.models import ConsistencyMode, ConsistencySpec, ConsistencyStatus

CONSISTENCY_KEY = "consistency"
STALENESS_KEY = "maxStalenessMs"
NO_BOUND = ""


@dataclass(frozen=True)
class ReadSetting:
    mode: str
    max_staleness_ms: int | None

    @staticmethod
    def of_spec(spec: ConsistencySpec) -> ReadSetting:
        # A bound only means something in mode bounded; elsewhere nodes ignore it, so it
        # is not sent (and a leftover bound never makes nodes look out of date).
        bound = spec.max_staleness_ms if spec.mode == "bounded" else None
        return ReadSetting(spec.mode, bound)

    @staticmethod
    def of_report(status: Mapping[str, Any]) -> ReadSetting | None:
        """From a node's GET /v1/status; None when the node does not say."""
        raw = status.get("consistency")
        if not isinstance(raw, Mapping) or not isinstance(raw.get("mode"), str):
            return None
        bound = raw.get("maxStalenessMs")
        return ReadSetting(raw["mode"], bound if isinstance(bound, int) else None)

    def configmap_data(self) -> dict[str, str]:
        bound = NO_BOUND if self.max_staleness_ms is None else str(self.max_staleness_ms)
        return {CONSISTENCY_KEY: self.mode, STALENESS_KEY: bound}

    def admin_body(self) -> dict[str, Any]:
        return {"mode": self.mode, "maxStalenessMs": self.max_staleness_ms}


def nodes_to_switch(
    desired: ReadSetting, reports: Mapping[int, ReadSetting | None], reachable: set[int]
) -> list[int]:
    """Reachable nodes whose reported setting is not the desired one, in id order.

    A node that reports nothing (an older image, or it has not answered) is asked too:
    the admin call is idempotent, and its answer tells why if it cannot comply.
    """
    return sorted(n for n in reachable if reports.get(n) != desired)


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
