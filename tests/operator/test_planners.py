"""Pure planners: shape refusals, read consistency, shard health, status conditions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shardset_operator.api.consistency import ReadSetting
from shardset_operator.api.models import ConsistencySpec, ShardSetStatus, TlsStatus
from shardset_operator.api.naming import node_id_of_pod
from shardset_operator.api.observed import PodState, StatefulSetState
from shardset_operator.clients.observe import ready_count
from shardset_operator.plan.bootstrap import first_map
from shardset_operator.plan.consistency import nodes_to_switch
from shardset_operator.plan.shape import plan_shape
from shardset_operator.status.conditions import Observation, compute_status
from shardset_operator.status.consistency import consistency_status
from shardset_operator.status.health import shard_health
from shardset_operator.status.patch import changed, status_patch, transitions
from shardset_operator.status.progress import rollout
from shardset_proto.status import NodeStatus

from .conftest import NAMES, group, node_report, spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# --- shape -------------------------------------------------------------------------------


def test_new_store_takes_its_size_from_the_spec() -> None:
    assert plan_shape(spec(nodes=5), None).replicas == 5
    assert plan_shape(spec(nodes=5), None).refusals == ()


def test_node_count_changes_are_planned_but_replication_changes_refused() -> None:
    recorded = first_map(replace(NAMES, tls=True), spec(nodes=3, replicationFactor=3))
    shape = plan_shape(spec(nodes=5, replicationFactor=3), recorded)
    assert shape.refusals == ()
    shape = plan_shape(spec(nodes=3, replicationFactor=1), recorded)
    assert [r.reason for r in shape.refusals] == ["ReplicationChangeNotSupported"]
    assert shape.replication == 3  # what the store really has, for the PDB and health
    assert plan_shape(spec(nodes=3), recorded).refusals == ()


def test_tls_follows_the_map_the_store_was_created_with() -> None:
    plain = first_map(NAMES, spec())
    assert not plan_shape(spec(tls={"mode": "Disabled"}), plain).tls
    refused = plan_shape(spec(), plain)  # default Operator, on a store created without
    assert not refused.tls
    assert [r.reason for r in refused.refusals] == ["TlsModeChangeNotSupported"]
    assert plan_shape(spec(), None).tls and not plan_shape(spec(tls={"mode": "Disabled"}), None).tls


# --- consistency -------------------------------------------------------------------------


def test_bound_only_travels_with_mode_bounded() -> None:
    assert ReadSetting.of_spec(ConsistencySpec(mode="lease", max_staleness_ms=5)) == ReadSetting(
        "lease", None
    )
    bounded = ReadSetting.of_spec(ConsistencySpec(mode="bounded", max_staleness_ms=5))
    assert bounded.admin_body().to_json() == {"mode": "bounded", "maxStalenessMs": 5}
    assert bounded.configmap_data() == {"consistency": "bounded", "maxStalenessMs": "5"}


def test_only_reachable_nodes_in_another_mode_are_switched() -> None:
    want = ReadSetting("lease", None)
    reports = {1: want, 2: ReadSetting("linearizable", None), 3: None, 4: None}
    assert nodes_to_switch(want, reports, reachable={1, 2, 3}) == [2, 3]


def test_effective_mode_is_the_one_all_nodes_report() -> None:
    want = ReadSetting("lease", None)
    old = ReadSetting("linearizable", None)
    mixed = consistency_status(want, {1: want, 2: old, 3: want}, [1, 2, 3])
    assert mixed.mode is None and mixed.nodes_applied == 2
    done = consistency_status(want, {1: want, 2: want, 3: want}, [1, 2, 3])
    assert done.mode == "lease" and done.nodes_applied == 3
    silent = consistency_status(want, {1: want, 2: want}, [1, 2, 3])
    assert silent.mode is None


def test_node_report_parsing() -> None:
    bounded = {"node": 1, "consistency": {"mode": "bounded", "maxStalenessMs": 9}}
    assert ReadSetting.of_report(NodeStatus.model_validate(bounded)) == ReadSetting("bounded", 9)
    older = NodeStatus.model_validate({"node": 1, "groups": {}})
    assert ReadSetting.of_report(older) is None  # an older node says nothing


# --- shard health ------------------------------------------------------------------------


def _three_healthy() -> dict[int, NodeStatus | None]:
    voters = [1, 2, 3]
    return {
        1: node_report(
            1, {"1": group("leader", 2, 1, voters), "2": group("follower", 3, 2, voters)}
        ),
        2: node_report(
            2, {"1": group("follower", 2, 1, voters), "2": group("leader", 3, 2, voters)}
        ),
        3: node_report(
            3, {"1": group("follower", 2, 1, voters), "2": group("follower", 3, 2, voters)}
        ),
    }


def test_all_shards_healthy() -> None:
    health = shard_health(_three_healthy(), [1, 2], 3)
    assert [h.healthy for h in health.values()] == [True, True]
    assert health[1].leader == 1 and health[2].leader == 2


def test_unreachable_voter_makes_shards_under_replicated() -> None:
    reports = _three_healthy()
    reports[3] = None
    health = shard_health(reports, [1, 2], 3)
    assert all(h.under_replicated and not h.leaderless for h in health.values())
    assert health[1].describe() == "shard 1 has 2/3 voters responsive"


def test_shard_without_leader_and_expected_shard_nobody_reports() -> None:
    reports = _three_healthy()
    reports[2] = None  # leader of shard 2 gone; followers have not elected yet
    health = shard_health(reports, [1, 2, 3], 3)
    assert health[2].leaderless
    assert health[3].leaderless and health[3].voters == ()
    assert not health[1].leaderless


def test_stale_leader_loses_to_the_higher_term() -> None:
    voters = [1, 2, 3]
    reports = {
        1: node_report(1, {"1": group("leader", 4, 1, voters)}),
        2: node_report(2, {"1": group("leader", 5, 2, voters)}),
        3: node_report(3, {"1": group("follower", 5, 2, voters)}),
    }
    assert shard_health(reports, [1], 3)[1].leader == 2


def test_too_few_voters_is_under_replicated_and_meta_is_no_shard() -> None:
    reports = {
        1: node_report(1, {"1": group("leader", 1, 1, [1, 2]), "meta": group("leader", 1, 1, [1])}),
        2: node_report(2, {"1": group("follower", 1, 1, [1, 2])}),
    }
    health = shard_health(reports, [1], 3)
    assert list(health) == [1]
    assert health[1].under_replicated


# --- observation helpers -----------------------------------------------------------------


def test_pod_names_map_to_node_ids() -> None:
    assert node_id_of_pod("kv-0", NAMES) == 1
    assert node_id_of_pod("kv-10", NAMES) == 11
    assert node_id_of_pod("kv-peers", NAMES) is None
    assert node_id_of_pod("other-0", NAMES) is None
    pods = [
        PodState("kv-0", True, False),
        PodState("kv-1", True, True),  # terminating
        PodState("kv-2", False, False),
        PodState("kv-5", True, False),  # beyond the store's size
    ]
    assert ready_count(pods, NAMES, 3) == 1


def test_rollout_description() -> None:
    done = StatefulSetState(3, 3, 3, "r1", "r1", 2, 2)
    assert rollout(done) is None
    assert "1/3" in (rollout(StatefulSetState(3, 3, 1, "r1", "r2", 2, 2)) or "")
    assert rollout(StatefulSetState(3, 3, 3, "r1", "r1", 1, 2)) is not None
    assert rollout(None) is not None


# --- status ------------------------------------------------------------------------------


def _obs(**over: object) -> Observation:
    reports = _three_healthy()
    want = ReadSetting("linearizable", None)
    base: dict[str, object] = {
        "generation": 2,
        "nodes": 3,
        "ready_nodes": 3,
        "answered": 3,
        "shards": shard_health(reports, [1, 2], 3),
        "consistency": consistency_status(want, {1: want, 2: want, 3: want}, [1, 2, 3]),
        "consistency_target": "linearizable",
        "bootstrap_written": True,
    }
    base.update(over)
    return Observation(**base)  # type: ignore[arg-type]


def _cond(status: ShardSetStatus, kind: str) -> tuple[str, str, str]:
    [c] = [c for c in status.conditions if c.type == kind]
    return c.status, c.reason, c.message


def test_healthy_store_is_ready_not_progressing_not_degraded() -> None:
    st = compute_status(ShardSetStatus(), _obs(), NOW)
    assert _cond(st, "Ready")[:2] == ("True", "StoreReady")
    assert _cond(st, "Progressing")[:2] == ("False", "Reconciled")
    assert _cond(st, "Degraded")[:2] == ("False", "AllShardsHealthy")
    assert st.bootstrapped and st.observed_generation == 2 and st.ready_nodes == 3
    assert (st.shards.total, st.shards.healthy) == (2, 2)
    assert st.consistency.mode == "linearizable"
    assert st.operation is None
    assert all(c.observed_generation == 2 for c in st.conditions)


def test_new_store_is_bootstrapping_until_every_shard_has_a_leader() -> None:
    reports = {1: None, 2: None, 3: None}
    obs = _obs(ready_nodes=0, answered=0, shards=shard_health(reports, [1, 2], 3))
    st = compute_status(ShardSetStatus(), obs, NOW)
    assert not st.bootstrapped
    assert _cond(st, "Progressing")[:2] == ("True", "Bootstrapping")
    assert _cond(st, "Ready")[:2] == ("False", "NodesNotReady")
    assert _cond(st, "Degraded")[0] == "Unknown"
    assert st.operation and "creating the store" in st.operation


def test_bootstrapped_stays_true_when_shards_lose_leaders_later() -> None:
    before = compute_status(ShardSetStatus(), _obs(), NOW)
    reports = _three_healthy()
    reports[2] = None
    obs = _obs(ready_nodes=2, answered=2, shards=shard_health(reports, [1, 2], 3), unreachable=(2,))
    st = compute_status(before, obs, NOW)
    assert st.bootstrapped
    status, reason, message = _cond(st, "Degraded")
    assert (status, reason) == ("True", "ShardsLeaderless")
    assert "shard 2 has no leader" in message and "unreachable nodes 2" in message
    assert _cond(st, "Ready")[:2] == ("False", "NodesNotReady")


def test_a_shard_with_a_majority_of_voters_down_is_reported_as_quorum_lost() -> None:
    before = compute_status(ShardSetStatus(), _obs(), NOW)
    reports = _three_healthy()
    reports[1] = reports[2] = None  # 2 of each shard's 3 voters down
    obs = _obs(ready_nodes=1, answered=1, shards=shard_health(reports, [1, 2], 3))
    st = compute_status(before, obs, NOW)
    status, reason, message = _cond(st, "Degraded")
    assert (status, reason) == ("True", "QuorumLost")
    assert "lost a majority of its voters [1, 2, 3] (answering: [3])" in message
    # One voter down is not a lost quorum.
    reports = _three_healthy()
    reports[2] = None
    one = compute_status(before, _obs(shards=shard_health(reports, [1, 2], 3)), NOW)
    assert _cond(one, "Degraded")[1] != "QuorumLost"


def test_consistency_switch_in_progress_is_progressing_with_errors_named() -> None:
    before = compute_status(ShardSetStatus(), _obs(), NOW)
    want = ReadSetting("lease", None)
    old = ReadSetting("linearizable", None)
    obs = _obs(
        consistency=consistency_status(want, {1: want, 2: old, 3: want}, [1, 2, 3]),
        consistency_target="lease",
        consistency_errors=("node 2: HTTP 404: unknown admin action 'consistency'",),
    )
    st = compute_status(before, obs, NOW)
    status, reason, message = _cond(st, "Progressing")
    assert (status, reason) == ("True", "ApplyingConsistency")
    assert "2/3 nodes switched" in message and "node 2: HTTP 404" in message
    assert st.operation == message
    assert st.consistency.mode is None


def test_refused_change_and_failed_reconcile_explain_themselves() -> None:
    from shardset_operator.api.refusal import Refusal

    refused = compute_status(
        ShardSetStatus(), _obs(refusals=(Refusal("ScaleNotSupported", "keep 3"),)), NOW
    )
    assert _cond(refused, "Progressing") == ("False", "ScaleNotSupported", "keep 3")
    failed = compute_status(ShardSetStatus(), _obs(failure="apply StatefulSet prod/kv: 403"), NOW)
    assert _cond(failed, "Progressing") == (
        "False",
        "ReconcileFailed",
        "apply StatefulSet prod/kv: 403",
    )


def test_transition_time_moves_only_with_the_status() -> None:
    first = compute_status(ShardSetStatus(), _obs(), NOW)
    later = NOW + timedelta(minutes=5)
    same = compute_status(first, _obs(), later)
    assert not changed(first, same)
    assert transitions(first, same) == []
    reports = _three_healthy()
    reports[3] = None
    worse = compute_status(first, _obs(answered=2, shards=shard_health(reports, [1, 2], 3)), later)
    degraded = next(c for c in worse.conditions if c.type == "Degraded")
    ready = next(c for c in worse.conditions if c.type == "Ready")
    assert degraded.last_transition_time == later
    assert ready.last_transition_time == NOW
    assert [c.type for c in transitions(first, worse)] == ["Degraded"]


def test_status_patch_clears_fields_that_went_away() -> None:
    st = compute_status(ShardSetStatus(), _obs(), NOW)
    body: dict[str, Any] = status_patch(st)
    assert body["operation"] is None
    assert body["consistency"] == {
        "mode": "linearizable",
        "maxStalenessMs": None,
        "nodesApplied": 3,
    }
    assert body["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert "readyNodes" in body and "observedGeneration" in body


def test_status_patch_clears_a_finished_ca_rotation() -> None:
    # A merge patch keeps what it does not mention: a rotation that ended must say null.
    st = compute_status(ShardSetStatus(), _obs(), NOW)
    done = st.model_copy(update={"tls": TlsStatus(mode="Operator", ca_not_after=NOW)})
    tls = status_patch(done)["tls"]
    assert tls["rotation"] is None and tls["caNotAfter"] == "2026-01-01T00:00:00Z"
    assert status_patch(st)["tls"] is None
