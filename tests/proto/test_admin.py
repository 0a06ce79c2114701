"""The admin contract (shardset_proto.admin): every action has a typed body whose JSON
is what the node has always accepted, and a wrong body is refused naming its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shardset_proto.admin import (
    BODIES,
    AddLearner,
    AddNode,
    AdminAction,
    AdminBody,
    BadBody,
    CheckConsistency,
    CreateReplica,
    DeleteUser,
    DropReplica,
    MapRecover,
    MapSplit,
    Promote,
    ProposeSystem,
    PutUser,
    ReadIndex,
    RebuildReplica,
    RecordReplicas,
    RecoverShard,
    RemoveNode,
    RemoveReplica,
    ReplicaDigest,
    SetConsistency,
    ShardState,
    SplitShard,
    SystemCommand,
    TransferLeader,
    parse_body,
)
from shardset_proto.identity import Role

# One body per action, with the JSON the operator and the nodes send today.
EXAMPLES: list[tuple[AdminBody, dict[str, Any]]] = [
    (TransferLeader(shard=3, to=2), {"shard": 3, "to": 2}),
    (CreateReplica(shard=3), {"shard": 3}),
    (CreateReplica(shard=9, voters=[1, 2, 3]), {"shard": 9, "voters": [1, 2, 3]}),
    (AddLearner(shard=3, node=4), {"shard": 3, "node": 4}),
    (Promote(shard=0, node=4), {"shard": 0, "node": 4}),
    (RemoveReplica(shard=3, node=1), {"shard": 3, "node": 1}),
    (DropReplica(shard=3), {"shard": 3}),
    (RecordReplicas(shard=3, voters=[3, 1, 2]), {"shard": 3, "voters": [3, 1, 2]}),
    (
        SplitShard(shard=1, new_shard=5, start=0, end=100),
        {"shard": 1, "new_shard": 5, "start": 0, "end": 100},
    ),
    (
        SplitShard(shard=1, new_shard=5, start=0, end=100, replicas=[1, 2]),
        {"shard": 1, "new_shard": 5, "start": 0, "end": 100, "replicas": [1, 2]},
    ),
    (
        ProposeSystem(
            shard=5, command=SystemCommand(op="ingest", start=0, end=100, data="AAEC")
        ),
        {"shard": 5, "command": {"op": "ingest", "start": 0, "end": 100, "data": "AAEC"}},
    ),
    (
        MapSplit(shard=1, new_shard=5, start=0, end=100, voters=[1, 2, 3]),
        {"shard": 1, "new_shard": 5, "start": 0, "end": 100, "voters": [1, 2, 3]},
    ),
    (SetConsistency(mode="lease"), {"mode": "lease", "maxStalenessMs": None}),
    (
        SetConsistency(mode="bounded", max_staleness_ms=250),
        {"mode": "bounded", "maxStalenessMs": 250},
    ),
    (
        AddNode(node=4, peer="n4:7000", api="http://n4:8080"),
        {"node": 4, "peer": "n4:7000", "api": "http://n4:8080"},
    ),
    (
        RecoverShard(shard=2, new_shard=6, voters=[1, 3]),
        {"shard": 2, "new_shard": 6, "voters": [1, 3]},
    ),
    (
        MapRecover(shard=2, new_shard=6, voters=[1, 3]),
        {"shard": 2, "new_shard": 6, "voters": [1, 3]},
    ),
    (RemoveNode(node=4), {"node": 4}),
    (ReadIndex(shard=3), {"shard": 3}),
    (CheckConsistency(shard=3), {"shard": 3}),
    (ReplicaDigest(shard=3, index=17), {"shard": 3, "index": 17}),
    (ShardState(shard=3, min_index=17), {"shard": 3, "min_index": 17}),
    (RebuildReplica(shard=3, reason="why"), {"shard": 3, "reason": "why"}),
    (
        PutUser(name="app", role=Role.READ, prefixes=["app/"], token_sha256="a" * 64),
        {"name": "app", "role": "read", "prefixes": ["app/"], "token_sha256": "a" * 64},
    ),
    (DeleteUser(name="app"), {"name": "app"}),
]


def test_every_action_has_one_body_named_for_it() -> None:
    assert len(AdminAction) == 22
    assert set(BODIES) == set(AdminAction)
    assert all(body.action == action for action, body in BODIES.items())
    assert {type(b).action for b, _ in EXAMPLES} == set(AdminAction)


@pytest.mark.parametrize(("body", "wire"), EXAMPLES, ids=lambda x: type(x).__name__)
def test_body_round_trips_through_json_unchanged(body: AdminBody, wire: dict[str, Any]) -> None:
    assert body.to_json() == wire
    decoded = json.loads(json.dumps(body.to_json()))
    assert parse_body(body.action, decoded) == body
    assert type(body).parse(decoded) == body


def test_paths_are_todays_urls() -> None:
    assert TransferLeader.path() == "/v1/admin/transfer-leader"
    assert AdminAction.READ_INDEX.path == "/v1/admin/read-index"
    assert AdminAction("map-recover") is AdminAction.MAP_RECOVER
    assert str(AdminAction.SPLIT_SHARD) == "split-shard"


def test_node_id_lists_are_sorted_without_repeats_but_record_keeps_order() -> None:
    assert MapSplit.parse({"shard": 1, "new_shard": 2, "start": 0, "end": 9, "voters": [3, 1, 3]})
    assert RecoverShard.parse({"shard": 1, "new_shard": 2, "voters": [3, 1, 3]}).voters == [1, 3]
    assert RecordReplicas.parse({"shard": 1, "voters": [3, 1, 2]}).voters == [3, 1, 2]


def test_unknown_fields_are_ignored_as_before_except_for_consistency() -> None:
    assert DropReplica.parse({"shard": 1, "why": "test"}) == DropReplica(shard=1)
    with pytest.raises(BadBody) as e:
        SetConsistency.parse({"mode": "lease", "typo": 1})
    assert e.value.field == "typo"


@pytest.mark.parametrize(
    ("action", "raw", "field"),
    [
        (AdminAction.TRANSFER_LEADER, {"shard": 1}, "to"),
        (AdminAction.TRANSFER_LEADER, {"shard": -1, "to": 2}, "shard"),
        (AdminAction.DROP_REPLICA, {"shard": True}, "shard"),
        (AdminAction.DROP_REPLICA, {"shard": "1"}, "shard"),
        (AdminAction.CREATE_REPLICA, {"shard": 1, "voters": []}, "voters"),
        (AdminAction.CREATE_REPLICA, {"shard": 1, "voters": [0]}, "voters.0"),
        (AdminAction.RECORD_REPLICAS, {"shard": 1, "voters": "1,2"}, "voters"),
        (AdminAction.ADD_NODE, {"node": 4, "peer": "", "api": "http://n4"}, "peer"),
        (AdminAction.SYSTEM, {"shard": 1, "command": {"op": "boom", "start": 0, "end": 1}},
         "command.op"),
        (AdminAction.CONSISTENCY, {"mode": "strong"}, "mode"),
        (AdminAction.CONSISTENCY, {"mode": "bounded"}, "maxStalenessMs"),
        (AdminAction.CONSISTENCY, {"mode": "bounded", "maxStalenessMs": 0}, "maxStalenessMs"),
    ],
)
def test_bad_body_is_refused_naming_the_field(
    action: AdminAction, raw: dict[str, Any], field: str
) -> None:
    with pytest.raises(BadBody) as e:
        parse_body(action, raw)
    assert e.value.field == field
    assert repr(field) in str(e.value) and str(action) in str(e.value)


def test_a_missing_field_says_so() -> None:
    with pytest.raises(BadBody) as e:
        SetConsistency.parse({})
    assert (e.value.field, e.value.missing) == ("mode", True)
    with pytest.raises(BadBody) as e:
        DropReplica.parse({"shard": None})
    assert (e.value.field, e.value.missing) == ("shard", False)
