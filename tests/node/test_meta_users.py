"""The metadata machine's users (issue 16): put and delete are idempotent, the snapshot
carries the shard map and the users, a snapshot written before users existed (the
encoded shard map alone, as every existing store has on disk) still restores, map
changes keep their bytes, and an entry or snapshot the node could not have written is
refused: by the machine (the node stops, as for any unappliable entry) and, before it
is stored, by the peer checks and the received-snapshot check."""

from __future__ import annotations

import json

import pytest

from shardset_node.config import META_GROUP
from shardset_node.replication.machines import (
    EntryNotApplicable,
    MetaMachine,
    check_received_snapshot,
)
from shardset_proto.identity import Role, token_digest
from shardset_proto.metadata import decode_snapshot
from shardset_proto.peer_checks import PeerMessageError, check_payload
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.users import User, UserTable
from shardset_raft.types import Entry, EntryType, Message, MessageType, Snapshot, SnapshotMeta

ALICE = User("alice", Role.READWRITE, ("app/",), token_digest("sst_alice"))
BOB = User("bob", Role.READ, (), None)


def _map() -> ShardMap:
    nodes = {
        n: NodeAddress(f"127.0.0.1:{7000 + n}", f"http://127.0.0.1:{8000 + n}") for n in (1, 2, 3)
    }
    return bootstrap_map(nodes, shards=2, replication=3)


def _apply(m: MetaMachine, *data: bytes, first: int = 1) -> list[object]:
    entries = [
        Entry(index=first + i, term=1, type=EntryType.NORMAL, data=d) for i, d in enumerate(data)
    ]
    return m.apply(entries)


def _snapshot(data: bytes, index: int = 10) -> Snapshot:
    return Snapshot(SnapshotMeta(index=index, term=1), data)


def test_put_and_delete_are_idempotent_and_answer_the_count() -> None:
    m = MetaMachine(_map())
    seen: list[UserTable] = []
    m.on_users_change = seen.append
    results = _apply(
        m,
        MetaMachine.put_user(ALICE),
        MetaMachine.put_user(ALICE),  # the same user again: ok, nothing changes
        MetaMachine.put_user(BOB),
        MetaMachine.delete_user("bob"),
        MetaMachine.delete_user("bob"),  # not there any more: ok
        MetaMachine.delete_user("carol"),  # never there: ok
    )
    assert results == [
        {"ok": True, "users": 1, "changed": True},
        {"ok": True, "users": 1, "changed": False},
        {"ok": True, "users": 2, "changed": True},
        {"ok": True, "users": 1, "changed": True},
        {"ok": True, "users": 1, "changed": False},
        {"ok": True, "users": 1, "changed": False},
    ]
    assert m.users.get("alice") == ALICE and m.users.get("bob") is None
    assert m.users.by_token("sst_alice") == ALICE
    # Told once per actual change, with the table then in force.
    assert [sorted(t.users) for t in seen] == [["alice"], ["alice", "bob"], ["alice"]]


def test_a_put_replaces_the_role_prefixes_and_token() -> None:
    m = MetaMachine(_map())
    demoted = User("alice", Role.READ, ("other/",), token_digest("sst_new"))
    _apply(m, MetaMachine.put_user(ALICE), MetaMachine.put_user(demoted))
    assert m.users.get("alice") == demoted
    assert m.users.by_token("sst_alice") is None  # the old token no longer works
    assert m.users.by_token("sst_new") == demoted


def test_a_token_already_held_by_another_user_is_refused() -> None:
    m = MetaMachine(_map())
    thief = User("mallory", Role.ADMIN, (), ALICE.token_sha256)
    results = _apply(m, MetaMachine.put_user(ALICE), MetaMachine.put_user(thief))
    assert results[1] == {"ok": False, "error": "token_in_use", "holder": "alice"}
    assert m.users.get("mallory") is None
    assert m.users.by_token("sst_alice") == ALICE


def test_map_changes_keep_their_bytes_and_users_leave_the_map_alone() -> None:
    m = MetaMachine(_map())
    new = m.map.with_changes(replicas={**m.map.replicas, 1: (3, 2, 1)})
    change = MetaMachine.change(m.map, new)
    # The format every existing log holds: the new node must write (and read) it as is.
    assert change == json.dumps({"expect_epoch": 1, "map": json.loads(new.encode())}).encode()
    results = _apply(m, MetaMachine.put_user(ALICE), change, MetaMachine.delete_user("alice"))
    assert results[1] == {"ok": True, "epoch": 2}
    assert m.map == new and not m.users.users
    stale = _apply(m, change, first=4)  # the same CAS again: its epoch is gone
    assert stale == [{"ok": False, "epoch": 2}]


def test_snapshot_round_trip_carries_map_and_users() -> None:
    m = MetaMachine(_map())
    new = m.map.with_changes(replicas={**m.map.replicas, 1: (2, 3, 1)})
    _apply(
        m, MetaMachine.put_user(ALICE), MetaMachine.put_user(BOB), MetaMachine.change(m.map, new)
    )
    data = m.snapshot()
    check_received_snapshot(META_GROUP, data)

    restored = MetaMachine(_map())
    maps: list[ShardMap] = []
    tables: list[UserTable] = []
    restored.on_change, restored.on_users_change = maps.append, tables.append
    restored.restore(_snapshot(data))
    assert restored.map == m.map == new
    assert restored.users == m.users
    assert restored.users.by_token("sst_alice") == ALICE
    assert maps == [new] and tables == [m.users]
    assert restored.snapshot() == data


def test_without_users_the_snapshot_is_the_old_format_byte_for_byte() -> None:
    m = MetaMachine(_map())
    _apply(m, MetaMachine.put_user(ALICE), MetaMachine.delete_user("alice"))
    # A store that never defines a user (or has none left) writes what older nodes read.
    assert m.snapshot() == m.map.encode()


def test_an_old_format_snapshot_restores_the_map_and_no_users() -> None:
    old_map = _map().with_changes(replicas={**_map().replicas, 2: (1, 3, 2)})
    old_snapshot = old_map.encode()  # what every store has on disk from before issue 16
    check_received_snapshot(META_GROUP, old_snapshot)
    m = MetaMachine(_map())
    _apply(m, MetaMachine.put_user(ALICE))
    m.restore(_snapshot(old_snapshot))
    assert m.map == old_map
    assert m.users == UserTable()  # the snapshot's state replaces the machine's whole
    assert decode_snapshot(old_snapshot) == (old_map, UserTable())


def _user_json(**changes: object) -> dict[str, object]:
    return {**ALICE.to_json(), **changes}


MALFORMED_ENTRIES = {
    "unknown op": {"op": "promote-user", "name": "alice"},
    "bad role": {"op": "put-user", "user": _user_json(role="root")},
    "bad name": {"op": "put-user", "user": _user_json(name="Alice Smith")},
    "name not a string": {"op": "put-user", "user": _user_json(name=7)},
    "digest not hex": {"op": "put-user", "user": _user_json(token_sha256="sst_plaintext")},
    "prefixes not a list": {"op": "put-user", "user": _user_json(prefixes="app/")},
    "empty prefix": {"op": "put-user", "user": _user_json(prefixes=[""])},
    "no user": {"op": "put-user"},
    "user not an object": {"op": "put-user", "user": ["alice", "admin"]},
    "delete without name": {"op": "delete-user"},
    "delete name not a string": {"op": "delete-user", "name": ["alice"]},
}


@pytest.mark.parametrize("doc", MALFORMED_ENTRIES.values(), ids=MALFORMED_ENTRIES.keys())
def test_a_malformed_user_entry_cannot_be_applied(doc: dict[str, object]) -> None:
    m = MetaMachine(_map())
    _apply(m, MetaMachine.put_user(ALICE))
    with pytest.raises(EntryNotApplicable) as caught:
        _apply(m, json.dumps(doc).encode(), first=2)
    assert caught.value.index == 2  # names the entry: the node stops on it (ApplyFailed)
    assert m.users.get("alice") == ALICE  # nothing half-applied


@pytest.mark.parametrize("doc", MALFORMED_ENTRIES.values(), ids=MALFORMED_ENTRIES.keys())
def test_a_peer_sending_a_malformed_user_entry_is_refused_before_storing(
    doc: dict[str, object],
) -> None:
    with pytest.raises(PeerMessageError):
        check_payload(META_GROUP, _append(json.dumps(doc).encode()))


def test_a_peer_sending_user_changes_passes_the_checks() -> None:
    for data in (
        MetaMachine.put_user(ALICE),
        MetaMachine.put_user(BOB),
        MetaMachine.delete_user("x"),
    ):
        check_payload(META_GROUP, _append(data))


def _append(data: bytes) -> Message:
    entry = Entry(index=5, term=1, type=EntryType.NORMAL, data=data)
    return Message(
        type=MessageType.APPEND,
        to=2,
        frm=1,
        term=1,
        log_term=1,
        index=4,
        entries=(entry,),
        commit=4,
    )


def _new_format(**changes: object) -> bytes:
    doc: dict[str, object] = {
        "format": 2,
        "map": json.loads(_map().encode()),
        "users": [ALICE.to_json()],
        **changes,
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        _new_format(format=3),
        _new_format(users={"alice": ALICE.to_json()}),
        _new_format(users=[ALICE.to_json(), ALICE.to_json()]),
        _new_format(users=[_user_json(role="root")]),
        _new_format(map={"epoch": 1}),
        b"[1, 2, 3]",
    ],
    ids=[
        "unknown format",
        "users not a list",
        "user twice",
        "bad role",
        "bad map",
        "not an object",
    ],
)
def test_a_malformed_metadata_snapshot_is_refused_on_receipt(data: bytes) -> None:
    assert decode_snapshot(_new_format())[1].get("alice") == ALICE  # the good one decodes
    with pytest.raises((ValueError, KeyError, TypeError)):
        check_received_snapshot(META_GROUP, data)
    snap = Message(
        type=MessageType.SNAPSHOT, to=2, frm=1, term=1, snapshot=_snapshot(data, index=4)
    )
    with pytest.raises(PeerMessageError):
        check_payload(META_GROUP, snap)
