"""PodDisruptionBudget: voluntary disruptions never cost a shard its quorum.

Every shard has replicationFactor voters on distinct nodes, so taking down k nodes
removes at most k voters of any shard; a shard keeps its majority while
k <= (replicationFactor - 1) // 2. With replicationFactor 1 or 2 that is 0: no pod may be
evicted voluntarily (a drain waits until someone deletes the pod by hand), because
any single node holds a replica without which some shard cannot commit.
"""

from __future__ import annotations

from typing import Any

from shardset_operator.api.naming import Names


def max_unavailable(replication_factor: int) -> int:
    return (replication_factor - 1) // 2


def pdb(names: Names, replication_factor: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": names.pdb, "namespace": names.namespace, "labels": names.labels()},
        "spec": {
            "maxUnavailable": max_unavailable(replication_factor),
            "selector": {"matchLabels": names.selector()},
        },
    }
