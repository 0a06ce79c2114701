"""Observe one store: its StatefulSet, its pods, every node's status report and the
shard map as the most up-to-date node holds it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shardset_operator.api.naming import Names, node_id_of_pod
from shardset_operator.api.observed import NodeViews, PodState, Seen
from shardset_operator.clients.kube import Kube
from shardset_operator.clients.nodeclient import NodeCallError, NodeClient
from shardset_proto.status import NodeStatus


def ready_count(pods: list[PodState], names: Names, nodes: int) -> int:
    """Ready, not terminating pods that are nodes 1..nodes of this store."""
    ids = {node_id_of_pod(p.name, names) for p in pods if p.ready and not p.terminating}
    return len({i for i in ids if i is not None and i <= nodes})


async def poll_nodes(nodes: NodeClient, names: Names, ids: Iterable[int]) -> NodeViews:
    """Every node's status, then the shard map from the node with the highest epoch."""
    wanted = sorted(ids)
    answers = await asyncio.gather(
        *(nodes.status(names.node_api(i)) for i in wanted), return_exceptions=True
    )
    reports: dict[int, NodeStatus | None] = {}
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
        key=lambda r: r.epoch,
        reverse=True,
    )
    live = None
    for report in newest[:2]:  # a second try if the newest one fails meanwhile
        try:
            view = await nodes.shardmap(names.node_api(report.node))
        except NodeCallError:
            continue
        live = view.shard_map()
        break
    return NodeViews(reports, errors, live)


async def observe(kube: Kube, nodes: NodeClient, names: Names, count: int) -> Seen:
    """`count`: node ids 1..count are asked (at least, the StatefulSet's replicas)."""
    sts, pods = await asyncio.gather(
        kube.statefulset(names.namespace, names.statefulset),
        kube.pods(names.namespace, names.selector_string()),
    )
    ids = range(1, max(count, sts.replicas if sts is not None else 0) + 1)
    views = await poll_nodes(nodes, names, ids)
    return Seen(sts, ready_count(pods, names, count), views, tuple(pods))
