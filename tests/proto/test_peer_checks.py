"""shardset_proto.peer_checks: every message a real core sends passes; every field of a
forged one is bounded and named when it is wrong."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardset_proto.commands import ComputeChecksum, Put, encode_check, encode_command
from shardset_proto.peer import encode_batch
from shardset_proto.peer_checks import (
    MAX_NUMBER,
    MAX_TERM_JUMP,
    PeerMessageError,
    check_header,
    check_message,
    check_term_jump,
)
from shardset_raft import Raft
from shardset_raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from shardset_sim.simulator import run_seed

U64_MAX = (1 << 64) - 1
SHARD = 3
PUT = encode_command(Put(b"k", b"v"))
MAP = (
    b'{"epoch": 2, "slots": [[0, 16384, 1]], "replicas": {"1": [1, 2]},'
    b' "nodes": {"1": ["h:1", "http://h:2"]}}'
)
MAP_CHANGE = b'{"expect_epoch": 1, "map": ' + MAP + b"}"


def append(*entries: Entry, term: int = 5, index: int = 10, log_term: int = 4) -> Message:
    return Message(MessageType.APPEND, 2, 1, term, log_term, index, entries, commit=3)


def snapshot_msg(meta: SnapshotMeta, data: bytes = b"") -> Message:
    return Message(MessageType.SNAPSHOT, 2, 1, 5, snapshot=Snapshot(meta, data))


GOOD_SNAPSHOT = SnapshotMeta(9, 4, ConfState(frozenset({1, 2})))


def test_every_message_the_simulated_cores_send_passes() -> None:
    """The checks encode what the core's own messages always satisfy: run the seeded
    simulator (crashes, partitions, snapshots, transfers) with every message checked."""
    refused: Counter[str] = Counter()
    seen: Counter[MessageType] = Counter()

    class Checked(Raft):
        def step(self, m: Message) -> None:
            seen[m.type] += 1
            try:
                check_header(SHARD, m, sender=m.frm, receiver=m.to)
            except PeerMessageError as exc:
                refused[f"{m.type.name}: {exc}"] += 1
            super().step(m)

    for seed in range(40):
        run_seed(seed, raft_class=Checked)
    assert not refused, refused.most_common(5)
    assert set(seen) == set(MessageType), f"the seeds never sent {set(MessageType) - set(seen)}"


def test_the_core_s_kinds_of_message_pass_with_their_payloads() -> None:
    entries = (
        Entry(4, 11),  # a new leader's empty entry
        Entry(5, 12, EntryType.NORMAL, PUT),
        Entry(5, 13, EntryType.CONF, ConfState(frozenset({1, 2}), frozenset({3})).encode()),
        Entry(5, 14, EntryType.NORMAL, b'\xc1{"op": "freeze", "start": 0, "end": 8, "to": 9}'),
        Entry(
            5, 15, EntryType.NORMAL, b'\xc1{"op": "ingest", "start": 0, "end": 8, "data": "AA=="}'
        ),
        Entry(5, 16, EntryType.NORMAL, encode_check(ComputeChecksum(7))),  # consistency check
    )
    check_message(SHARD, append(*entries), sender=1, receiver=2)
    check_message(0, append(Entry(5, 11, EntryType.NORMAL, MAP_CHANGE)), sender=1, receiver=2)
    check_message(SHARD, snapshot_msg(GOOD_SNAPSHOT, b"any engine file"), sender=1, receiver=2)
    check_message(0, snapshot_msg(GOOD_SNAPSHOT, MAP), sender=1, receiver=2)


def _with(**changes: Any) -> Message:
    base = Message(MessageType.HEARTBEAT, 2, 1, 5, commit=3)
    return dataclasses.replace(base, **changes)


BAD: list[tuple[int, Message, str]] = [
    (SHARD, _with(term=U64_MAX), "term"),
    (SHARD, _with(term=MAX_NUMBER + 1), "term"),
    (SHARD, _with(commit=U64_MAX), "commit"),
    (SHARD, _with(context=1 << 63), "context"),
    (1 << 63, _with(), "group"),
    (SHARD, _with(frm=3), "frm"),
    (SHARD, _with(to=7), "to"),
    (SHARD, _with(frm=0), "frm"),
    (SHARD, _with(log_term=6), "log_term"),
    (SHARD, _with(reject=True), "reject"),
    (SHARD, _with(entries=(Entry(5, 1),)), "entries"),
    (SHARD, _with(type=MessageType.SNAPSHOT), "snapshot"),
    (SHARD, _with(snapshot=Snapshot(GOOD_SNAPSHOT)), "snapshot"),
    (SHARD, append(Entry(5, 12)), "entries[0].index"),
    (SHARD, append(Entry(5, 11), Entry(5, 13)), "entries[1].index"),
    (SHARD, append(Entry(6, 11)), "entries[0].term"),
    (SHARD, append(Entry(3, 11)), "entries[0].term"),
    (SHARD, append(Entry(5, 11), Entry(4, 12)), "entries[1].term"),
    (SHARD, append(Entry(5, MAX_NUMBER + 1), index=MAX_NUMBER), "entries"),
    (SHARD, snapshot_msg(dataclasses.replace(GOOD_SNAPSHOT, term=6)), "snapshot.term"),
    (SHARD, snapshot_msg(dataclasses.replace(GOOD_SNAPSHOT, index=0)), "snapshot.index"),
    (SHARD, snapshot_msg(SnapshotMeta(9, 4, ConfState())), "snapshot.conf.voters"),
    (
        SHARD,
        snapshot_msg(SnapshotMeta(9, 4, ConfState(frozenset({1}), frozenset({1})))),
        "snapshot.conf",
    ),
    (
        SHARD,
        snapshot_msg(SnapshotMeta(9, 4, ConfState(frozenset({U64_MAX})))),
        "snapshot.conf member",
    ),
    # The payloads: what the group's state machine would be handed.
    (SHARD, append(Entry(5, 11, EntryType.NORMAL, b"\x93not a command")), "entries[0] (index 11)"),
    (SHARD, append(Entry(5, 11, EntryType.NORMAL, b"\xc1{}")), "entries[0] (index 11)"),
    (
        SHARD,
        append(Entry(5, 11, EntryType.NORMAL, b'\xc1{"op": "drop", "start": 5, "end": 99999}')),
        "entries[0] (index 11)",
    ),
    (SHARD, append(Entry(5, 11, EntryType.CONF, b"2,1;")), "entries[0] (index 11)"),
    (SHARD, append(Entry(5, 11, EntryType.CONF, b"x;y")), "entries[0] (index 11)"),
    (0, append(Entry(5, 11, EntryType.NORMAL, PUT)), "entries[0] (index 11)"),
    (0, append(Entry(5, 11, EntryType.NORMAL, b"[" * 100_000)), "entries[0] (index 11)"),
    (0, snapshot_msg(GOOD_SNAPSHOT, b"not a map"), "snapshot.data"),
]


@pytest.mark.parametrize(("group", "message", "field"), BAD)
def test_a_forged_field_is_refused_by_name(group: int, message: Message, field: str) -> None:
    with pytest.raises(PeerMessageError) as caught:
        check_message(group, message, sender=1, receiver=2)
    assert caught.value.field == field, str(caught.value)


u64 = st.integers(min_value=0, max_value=U64_MAX)
number = st.one_of(st.integers(0, 20), st.integers(MAX_NUMBER - 2, MAX_NUMBER + 2), u64)
blobs = st.one_of(st.binary(max_size=40), st.just(PUT), st.just(b"1,2;3"), st.just(b""))
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=st.one_of(st.just(2), number),
    frm=st.one_of(st.just(1), number),
    term=number,
    log_term=number,
    index=number,
    entries=st.lists(
        st.builds(Entry, number, number, st.sampled_from(EntryType), blobs), max_size=3
    ).map(tuple),
    commit=number,
    reject=st.booleans(),
    reject_hint=number,
    context=number,
    snapshot=st.none()
    | st.builds(
        Snapshot,
        st.builds(
            SnapshotMeta,
            number,
            number,
            st.builds(
                ConfState, st.frozensets(number, max_size=3), st.frozensets(number, max_size=3)
            ),
        ),
        blobs,
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.just(0), st.just(SHARD), number), messages)
def test_a_message_that_passes_stays_encodable_as_the_core_moves_on(group: int, m: Message) -> None:
    """Anything but PeerMessageError is a bug; what passes, the codec can encode, and so
    it can the core's next term and the entries after it."""
    try:
        check_message(group, m, sender=1, receiver=2)
    except PeerMessageError:
        return
    last = m.index + len(m.entries)
    successor = dataclasses.replace(m, term=m.term + 1, index=last + 1, commit=last + 1)
    encode_batch([(group, m), (group, successor)])


def test_a_term_far_ahead_of_the_replica_s_own_is_refused() -> None:
    check_term_jump(_with(term=5 + MAX_TERM_JUMP), 5)
    with pytest.raises(PeerMessageError, match="ahead of ours") as caught:
        check_term_jump(_with(term=6 + MAX_TERM_JUMP), 5)
    assert caught.value.field == "term"


def test_a_consistency_check_entry_that_does_not_decode_is_refused() -> None:
    with pytest.raises(PeerMessageError, match="consistency check"):
        check_message(
            SHARD, append(Entry(5, 11, EntryType.NORMAL, b"\xc2\xc1")), sender=1, receiver=2
        )
