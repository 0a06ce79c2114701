"""Recovering a shard that lost its quorum for good (pure), only when asked.

Asked with the annotation `shardset.io/recover-shards: "<shard>[,<shard>...]"` on the
ShardSet. For each named shard that has no leader and too few answering voters to
elect one, the answering replica that applied the most is the survivor: the node
rebuilds the shard from its applied state as a new shard on the survivor and the
least-loaded answering nodes (`recover-shard`), and the old shard leaves the map.
Writes the lost majority had committed beyond the survivor's applied index are lost;
the Event and the node's log say which index the shard was recovered at. Never done
without the annotation, and never for a shard that can still elect a leader.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from shardset_operator.moves import ShardView, Step, call
from shardset_operator.rebalance import load
from shardset_proto.shardmap import ShardMap

ANNOTATION = "shardset.io/recover-shards"


def requested(annotations: Mapping[str, str] | None) -> frozenset[int]:
    """The shard ids the annotation names; anything unreadable names nothing."""
    raw = (annotations or {}).get(ANNOTATION, "")
    return frozenset(int(p) for p in raw.replace(" ", "").split(",") if p.isdigit())


def recovery_step(
    wanted: Collection[int],
    live: ShardMap,
    views: Mapping[int, ShardView],
    reports: Mapping[int, Mapping[str, Any] | None],
    targets: Collection[int],
    replication: int,
) -> Step | None:
    answering = {n for n, r in reports.items() if r is not None}
    for shard in sorted(wanted):
        v = views.get(shard)
        holders = live.replicas.get(shard, ())
        if v is None or v.leader is not None:
            continue  # gone already (recovered), or it has a leader: nothing to do
        alive = [n for n in holders if n in answering and _applied(reports[n], shard) is not None]
        if 2 * len(alive) > len(holders):
            continue  # a majority answers: it elects a leader by itself
        if not alive:
            continue  # no replica left to recover from
        survivor = max(alive, key=lambda n: (_applied(reports[n], shard) or 0, -n))
        counts = load(live.replicas, [n for n in targets if n in answering])
        others = sorted((n for n in counts if n != survivor), key=lambda n: (counts[n], n))
        voters = sorted([survivor, *others[: replication - 1]])
        new = max(live.replicas) + 1
        body = {"shard": shard, "new_shard": new, "voters": voters}
        text = (
            f"recover shard {shard} (quorum lost) from node {survivor} at applied index "
            f"{_applied(reports[survivor], shard)} into shard {new} on nodes {voters}"
        )
        return call("recover-shard", survivor, body, text)
    return None


def _applied(report: Mapping[str, Any] | None, shard: int) -> int | None:
    groups = (report or {}).get("groups") or {}
    entry = groups.get(str(shard))
    return int(entry.get("applied", 0)) if isinstance(entry, Mapping) else None
