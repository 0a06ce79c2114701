"""The ShardSet status from one observation of the store (pure).

Conditions follow the Kubernetes API conventions: one per type, lastTransitionTime
moves only when the status value moves, reasons are CamelCase and messages say what
is wrong in words (a stuck reconcile explains itself here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from shardset_operator.api.models import (
    Condition,
    ConditionStatus,
    ConditionType,
    ConsistencyStatus,
    ShardCounts,
    ShardSetStatus,
)
from shardset_operator.api.refusal import Refusal
from shardset_operator.status.health import ShardHealth


@dataclass(frozen=True)
class Observation:
    """What one reconcile saw and did; every field comes from the cluster or the nodes."""

    generation: int
    nodes: int  # node pods there should be (the StatefulSet's replicas)
    ready_nodes: int
    answered: int  # nodes that answered GET /v1/status
    shards: Mapping[int, ShardHealth]
    consistency: ConsistencyStatus
    consistency_target: str  # the desired mode, for messages
    bootstrap_written: bool
    rollout: str | None = None  # a StatefulSet rollout in progress, in words
    refusals: tuple[Refusal, ...] = ()
    consistency_errors: tuple[str, ...] = ()
    failure: str | None = None  # the reconcile step that failed and why
    unreachable: tuple[int, ...] = field(default=())
    operation: str | None = None  # the journal's operation and step, in words


def _counts(shards: Mapping[int, ShardHealth]) -> ShardCounts:
    return ShardCounts(
        total=len(shards),
        healthy=sum(h.healthy for h in shards.values()),
        under_replicated=sum(h.under_replicated for h in shards.values()),
        leaderless=sum(h.leaderless for h in shards.values()),
    )


def _bootstrapped(previous: ShardSetStatus, obs: Observation) -> bool:
    """Once every shard of the written bootstrap map had a leader, the store exists."""
    if previous.bootstrapped:
        return True
    led = obs.answered > 0 and obs.shards and all(not h.leaderless for h in obs.shards.values())
    return obs.bootstrap_written and bool(led)


def _ids(label: str, ids: list[int]) -> str:
    return f"{label} {', '.join(map(str, ids))}"


def _ready(obs: Observation) -> tuple[ConditionStatus, str, str]:
    leaderless = sorted(s for s, h in obs.shards.items() if h.leaderless)
    if obs.ready_nodes < obs.nodes:
        return "False", "NodesNotReady", f"{obs.ready_nodes}/{obs.nodes} nodes ready"
    if obs.answered and leaderless:
        return "False", "ShardsLeaderless", _ids("no leader for shards", leaderless)
    if not obs.answered:
        # Every pod passed /readyz (which needs a leader for each of its shards), so the
        # store serves; the operator just cannot see the shard details.
        return (
            "True",
            "NodesReady",
            (
                f"{obs.nodes}/{obs.nodes} nodes ready; shard health unknown: "
                "no node answered the operator"
            ),
        )
    return "True", "StoreReady", f"{obs.nodes}/{obs.nodes} nodes ready, every shard led"


def _progressing(obs: Observation, bootstrapped: bool) -> tuple[ConditionStatus, str, str]:
    if obs.failure:
        return "False", "ReconcileFailed", obs.failure
    if obs.refusals:
        return _refused(obs.refusals)
    if not bootstrapped:
        return (
            "True",
            "Bootstrapping",
            (
                f"creating the store: {obs.ready_nodes}/{obs.nodes} nodes ready, "
                "waiting for every shard to elect a leader"
            ),
        )
    if obs.rollout:
        return "True", "RollingOut", obs.rollout
    if obs.operation:
        return "True", "OperationInProgress", obs.operation
    if obs.consistency.nodes_applied < obs.nodes:
        message = (
            f"switching reads to {obs.consistency_target}: "
            f"{obs.consistency.nodes_applied}/{obs.nodes} nodes switched"
        )
        if obs.consistency_errors:
            message += "; " + "; ".join(obs.consistency_errors)
        return "True", "ApplyingConsistency", message
    return "False", "Reconciled", f"the store matches generation {obs.generation}"


def _refused(refusals: tuple[Refusal, ...]) -> tuple[ConditionStatus, str, str]:
    return "False", refusals[0].reason, "; ".join(r.message for r in refusals)


def _degraded(obs: Observation, bootstrapped: bool) -> tuple[ConditionStatus, str, str]:
    if not bootstrapped:
        return "Unknown", "Bootstrapping", "the store is being created"
    if not obs.answered:
        return "Unknown", "NodesUnreachable", (f"none of {obs.nodes} nodes answered GET /v1/status")
    bad = [h for h in obs.shards.values() if not h.healthy]
    if not bad:
        return "False", "AllShardsHealthy", f"{len(obs.shards)} shards led and fully replicated"
    lost = [h for h in bad if h.quorum_lost]
    if lost:
        reason = "QuorumLost"
        message = "; ".join(
            f"shard {h.shard} lost a majority of its voters {list(h.voters)} "
            f"(answering: {list(h.responsive_voters) or 'none'})"
            for h in lost
        )
        message += (
            ": its writes and linearizable reads are refused until they return. If they "
            "are gone for good, annotate the ShardSet with shardset.io/recover-shards="
            f"{','.join(str(h.shard) for h in lost)} to rebuild from the most up-to-date "
            "survivor (writes only the lost replicas held are lost; docs/operations.md)"
        )
    else:
        reason = (
            "ShardsLeaderless"
            if any(h.leaderless for h in bad)
            else "ShardsUnderReplicated"
            if any(h.under_replicated for h in bad)
            else "ReplicasDiverged"
        )
        message = "; ".join(h.describe() for h in bad)
    if obs.unreachable:
        message += "; " + _ids("unreachable nodes", list(obs.unreachable))
    return "True", reason, message


def set_condition(
    conditions: list[Condition],
    kind: ConditionType,
    value: tuple[ConditionStatus, str, str],
    generation: int,
    now: datetime,
) -> Condition:
    """The new condition; keeps the old transition time when the status did not move."""
    status, reason, message = value
    old = next((c for c in conditions if c.type == kind), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def compute_status(previous: ShardSetStatus, obs: Observation, now: datetime) -> ShardSetStatus:
    bootstrapped = _bootstrapped(previous, obs)
    progressing = _progressing(obs, bootstrapped)
    values: list[tuple[ConditionType, tuple[ConditionStatus, str, str]]] = [
        ("Ready", _ready(obs)),
        ("Progressing", progressing),
        ("Degraded", _degraded(obs, bootstrapped)),
    ]
    return ShardSetStatus(
        observed_generation=obs.generation,
        conditions=[
            set_condition(previous.conditions, kind, value, obs.generation, now)
            for kind, value in values
        ],
        ready_nodes=obs.ready_nodes,
        shards=_counts(obs.shards),
        consistency=obs.consistency,
        operation=progressing[2] if progressing[0] == "True" else None,
        bootstrapped=bootstrapped,
    )


def with_failure(
    previous: ShardSetStatus, generation: int, message: str, now: datetime
) -> ShardSetStatus:
    """The previous status with Progressing=False/ReconcileFailed, for a reconcile that
    could not even observe the store (the other conditions keep their last values)."""
    failed = set_condition(
        previous.conditions, "Progressing", ("False", "ReconcileFailed", message), generation, now
    )
    others = [c for c in previous.conditions if c.type != "Progressing"]
    return previous.model_copy(update={"conditions": [*others, failed], "operation": None})
