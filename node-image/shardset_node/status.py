"""What a node reports about itself: its status (`/v1/status`: every group's Raft
state, the default read consistency) and its view of the shard map (`/v1/shardmap`)."""

from __future__ import annotations

from typing import Any

from shardset_node.config import META_GROUP
from shardset_node.core import Node
from shardset_node.group import ReplicaGroup
from shardset_node.reads import ReadPath
from shardset_raft import Role


def shardmap_view(node: Node) -> dict[str, Any]:
    m = node.meta.map
    leaders = {str(gid): g.raft.leader for gid, g in node.host.groups.items() if gid}
    return {
        "epoch": m.epoch,
        "slots": [[r.start, r.end, r.shard] for r in m.slots],
        "replicas": {str(s): list(h) for s, h in m.replicas.items()},
        "nodes": {str(n): {"peer": a.peer, "api": a.api} for n, a in m.nodes.items()},
        "leaders": leaders,
    }


def status(node: Node, reads: ReadPath) -> dict[str, Any]:
    groups = {
        "meta" if gid == META_GROUP else str(gid): _group(node.id, g)
        for gid, g in sorted(node.host.groups.items())
    }
    return {
        "node": node.id,
        "origin": node.origin,
        "epoch": node.meta.map.epoch,
        "consistency": reads.policy.view(),
        "groups": groups,
    }


def _group(me: int, g: ReplicaGroup) -> dict[str, Any]:
    r = g.raft
    entry: dict[str, Any] = {
        "role": r.role.name.lower(),
        "term": r.term,
        "leader": r.leader,
        "commit": r.committed,
        "applied": r.applied,
        "last_index": r.log.last_index(),
        "voters": sorted(r.conf.voters),
        "learners": sorted(r.conf.learners),
    }
    if r.role == Role.LEADER:
        last = r.log.last_index()
        entry["followers"] = {
            str(p): {
                "match": pr.match,
                "lag": last - pr.match,
                "state": pr.state.name.lower(),
            }
            for p, pr in r.progress.items()
            if p != me
        }
    return entry
