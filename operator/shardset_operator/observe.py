"""Observe one store: its StatefulSet, its pods, every node's status report and the
shard map as the most up-to-date node holds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shardset_operator.kube import Kube, PodState, StatefulSetState
from shardset_operator.naming import Names, node_id_of_pod
from shardset_operator.nodeclient import NodeCallError, NodeClient
from shardset_proto.shardmap import ShardMap


@dataclass(frozen=True)
class NodeViews:
    """What the nodes said: status reports, who did not answer, the newest shard map."""

    reports: Mapping[int, dict[str, Any] | None]  # node id -> GET /v1/status, None: no answer
    errors: Mapping[int, str]  # node id -> why it did not answer
    live_map: ShardMap | None  # None: no node answered with one

    @property
    def answering(self) -> set[int]:
        return {i for i, r in self.reports.items() if r is not None}

    def trusted_map(self, known_epoch: int | None) -> ShardMap | None:
        """The newest shard map the nodes gave, unless it is older than one already seen
        (a node cut off from the metadata group): nothing is sized or planned from it."""
        live = self.live_map
        if live is None or (known_epoch is not None and live.epoch < known_epoch):
            return None
        return live


@dataclass(frozen=True)
class Seen:
    statefulset: StatefulSetState | None
    ready_nodes: int
    nodes: NodeViews
    pods: tuple[PodState, ...] = ()

    @property
    def reports(self) -> Mapping[int, dict[str, Any] | None]:
        return self.nodes.reports

    @property
    def errors(self) -> Mapping[int, str]:
        return self.nodes.errors


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


async def poll_nodes(nodes: NodeClient, names: Names, ids: Iterable[int]) -> NodeViews:
    """Every node's status, then the shard map from the node with the highest epoch."""
    wanted = sorted(ids)
    answers = await asyncio.gather(
        *(nodes.status(names.api_url(i)) for i in wanted), return_exceptions=True
    )
    reports: dict[int, dict[str, Any] | None] = {}
    errors: dict[int, str] = {}
    for i, answer in zip(wanted, answers, strict=True):
        if isinstance(answer, NodeCallError):
            reports[i], errors[i] = None, str(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            reports[i] = answer
    newest = sorted(
        (r for r in reports.values() if r is not None),
        key=lambda r: int(r.get("epoch", 0)),
        reverse=True,
    )
    live = None
    for report in newest[:2]:  # a second try if the newest one fails meanwhile
        try:
            view = await nodes.shardmap(names.api_url(int(report["node"])))
        except NodeCallError:
            continue
        live = map_of_view(view)
        break
    return NodeViews(reports, errors, live)


def map_of_view(view: Mapping[str, Any]) -> ShardMap:
    """GET /v1/shardmap's body as a ShardMap."""
    nodes = {n: [a["peer"], a["api"]] for n, a in view["nodes"].items()}
    doc = {k: view[k] for k in ("epoch", "slots", "replicas")} | {"nodes": nodes}
    return ShardMap.decode(json.dumps(doc).encode())


async def observe(kube: Kube, nodes: NodeClient, names: Names, count: int) -> Seen:
    """`count`: node ids 1..count are asked (at least, the StatefulSet's replicas)."""
    sts, pods = await asyncio.gather(
        kube.statefulset(names.namespace, names.statefulset),
        kube.pods(names.namespace, names.selector_string()),
    )
    ids = range(1, max(count, sts.replicas if sts is not None else 0) + 1)
    views = await poll_nodes(nodes, names, ids)
    return Seen(sts, ready_count(pods, names, count), views, tuple(pods))
