"""Observe one store: its StatefulSet, its pods and every node's own status report."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shardset_operator.kube import Kube, PodState, StatefulSetState
from shardset_operator.naming import Names, node_id_of_pod
from shardset_operator.nodeclient import NodeCallError, NodeClient


@dataclass(frozen=True)
class Seen:
    statefulset: StatefulSetState | None
    ready_nodes: int
    reports: Mapping[int, dict[str, Any] | None]  # node id -> GET /v1/status, None: no answer
    errors: Mapping[int, str]  # node id -> why it did not answer


def ready_count(pods: list[PodState], names: Names, nodes: int) -> int:
    """Ready, not terminating pods that are nodes 1..nodes of this store."""
    ids = {node_id_of_pod(p.name, names) for p in pods if p.ready and not p.terminating}
    return len({i for i in ids if i is not None and i <= nodes})


def rollout(sts: StatefulSetState | None) -> str | None:
    """The StatefulSet rollout in progress, in words; None when there is none."""
    if sts is None:
        return "waiting for the StatefulSet to be created"
    seen, wanted = sts.observed_generation, sts.generation
    if seen is not None and wanted is not None and seen < wanted:
        return "waiting for the StatefulSet controller to see the new pod template"
    if sts.update_revision and sts.current_revision != sts.update_revision:
        return f"rolling out a new pod template: {sts.updated}/{sts.replicas} pods updated"
    return None


async def observe(kube: Kube, nodes: NodeClient, names: Names, count: int) -> Seen:
    sts, pods = await asyncio.gather(
        kube.statefulset(names.namespace, names.statefulset),
        kube.pods(names.namespace, names.selector_string()),
    )
    ids = list(range(1, count + 1))
    answers = await asyncio.gather(
        *(nodes.status(names.api_url(i)) for i in ids), return_exceptions=True
    )
    reports: dict[int, dict[str, Any] | None] = {}
    errors: dict[int, str] = {}
    for i, answer in zip(ids, answers, strict=True):
        if isinstance(answer, NodeCallError):
            reports[i], errors[i] = None, str(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            reports[i] = answer
    return Seen(sts, ready_count(pods, names, count), reports, errors)
