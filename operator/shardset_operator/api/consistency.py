"""The read consistency setting: from the spec, in the ConfigMap, in the admin call's
body, and as a node reports it.

Nodes start in the mode of the ConfigMap (env vars from configMapKeyRef, so changing
the mode never changes the pod template and never restarts a pod) and are switched
live through POST /v1/admin/consistency. "No bound" is an empty maxStalenessMs in the
ConfigMap (the key must exist for the env var to resolve, and the node reads an empty
SHARDSET_MAX_STALENESS_MS as unset; it refuses 0); the API and the admin endpoint say
it with null.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardset_operator.api.models import ConsistencySpec
from shardset_proto.admin import SetConsistency
from shardset_proto.status import NodeStatus

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
    def of_report(status: NodeStatus) -> ReadSetting | None:
        """From a node's GET /v1/status; None when the node does not say."""
        view = status.consistency
        if view is None:
            return None
        return ReadSetting(view.mode, view.max_staleness_ms)

    def configmap_data(self) -> dict[str, str]:
        bound = NO_BOUND if self.max_staleness_ms is None else str(self.max_staleness_ms)
        return {CONSISTENCY_KEY: self.mode, STALENESS_KEY: bound}

    def admin_body(self) -> SetConsistency:
        """The body of POST /v1/admin/consistency (a ValidationError for a setting the
        node would refuse, such as bounded reads without a bound)."""
        return SetConsistency.model_validate(
            {"mode": self.mode, "maxStalenessMs": self.max_staleness_ms}
        )
