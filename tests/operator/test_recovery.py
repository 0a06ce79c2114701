"""The quorum-recovery planner: only shards asked for, only without a leader and a
majority, from the replica that applied the most, onto the least loaded nodes."""

from __future__ import annotations

from typing import Any

from shardset_operator.moves import views_of
from shardset_operator.recovery import recovery_step, requested
from shardset_proto.shardmap import NodeAddress, bootstrap_map

NODES = {i: NodeAddress(f"h{i}:1", f"http://h{i}:2") for i in range(1, 6)}
LIVE = bootstrap_map(NODES, 4, 3)


def reports(down: set[int], applied: dict[int, int]) -> dict[int, dict[str, Any] | None]:
    """Every node hosts its shards as followers (no leader anywhere)."""
    out: dict[int, dict[str, Any] | None] = {}
    for n in NODES:
        if n in down:
            out[n] = None
            continue
        groups = {
            str(s): {"role": "follower", "term": 3, "voters": list(h), "applied": applied.get(n, 0)}
            for s, h in LIVE.replicas.items()
            if n in h
        }
        out[n] = {"node": n, "groups": groups}
    return out


def test_the_annotation_names_shards() -> None:
    assert requested({"shardset.io/recover-shards": "3, 5,x"}) == {3, 5}
    assert requested({}) == frozenset() and requested(None) == frozenset()


def test_a_shard_is_rebuilt_from_the_replica_that_applied_most() -> None:
    holders = LIVE.replicas[1]
    down = set(holders[:2])
    seen = reports(down, applied={holders[2]: 40})
    views = views_of(seen, LIVE.replicas)
    step = recovery_step({1}, LIVE, views, seen, list(NODES), 3)
    assert step is not None and step.action == "recover-shard" and step.at == holders[2]
    assert step.body["new_shard"] == 5 and holders[2] in step.body["voters"]
    assert not set(step.body["voters"]) & down and len(step.body["voters"]) == 3
    assert "applied index 40" in step.text


def test_no_recovery_unless_asked_or_while_a_majority_answers() -> None:
    holders = LIVE.replicas[1]
    seen = reports(set(holders[:2]), applied={})
    views = views_of(seen, LIVE.replicas)
    assert recovery_step(set(), LIVE, views, seen, list(NODES), 3) is None
    one_down = reports({holders[0]}, applied={})
    views = views_of(one_down, LIVE.replicas)
    assert recovery_step({1}, LIVE, views, one_down, list(NODES), 3) is None
