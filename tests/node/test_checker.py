"""The consistency checker's verdict, and the check entry's encoding (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardset_node.checker import CORRUPT, judge
from shardset_node.replication.machines import ShardMachine
from shardset_node.storage.kvengine import KvEngine
from shardset_proto.commands import (
    CommandError,
    ComputeChecksum,
    Put,
    decode_check,
    decode_command,
    encode_check,
    encode_command,
    is_check,
)
from shardset_raft import Entry, EntryType


def test_the_majority_decides_which_replica_is_bad() -> None:
    view = judge(7, [1, 2, 3], {1: "a", 2: "b", 3: "a"})
    assert (view.ok, view.decided, view.mismatched, view.index) == (False, True, [2], 7)


def test_agreement_is_ok_and_a_missing_answer_is_no_mismatch() -> None:
    assert judge(7, [1, 2, 3], {1: "a", 2: "a", 3: "a"}).ok
    view = judge(7, [1, 2, 3], {1: "a", 2: None, 3: "a"})
    assert view.ok and view.mismatched == []


def test_a_corrupt_replica_is_always_mismatched() -> None:
    view = judge(7, [1, 2, 3], {1: "a", 2: CORRUPT, 3: "a"})
    assert (view.ok, view.decided, view.mismatched) == (False, True, [2])


def test_without_a_majority_nothing_is_decided() -> None:
    view = judge(7, [1, 2, 3], {1: "a", 2: "b", 3: None})
    assert (view.ok, view.decided) == (False, False)


def test_check_entries_round_trip_and_are_no_commands() -> None:
    data = encode_check(ComputeChecksum(42))
    assert is_check(data) and decode_check(data) == ComputeChecksum(42)
    with pytest.raises(CommandError):
        decode_command(data)
    with pytest.raises(CommandError):
        decode_check(data[:1] + b"\x92\x01\x02")
    with pytest.raises(CommandError):
        ComputeChecksum(-1)


def _machine(tmp_path: Path, name: str) -> ShardMachine:
    (tmp_path / name).mkdir()
    return ShardMachine(KvEngine(tmp_path / name / "kv.sqlite3"), 1, tmp_path / name / "tmp")


def _entries(*datas: bytes) -> list[Entry]:
    return [Entry(term=1, index=i, type=EntryType.NORMAL, data=d) for i, d in enumerate(datas, 1)]


def test_replicas_digest_the_state_at_the_check_entry(tmp_path: Path) -> None:
    a, b = _machine(tmp_path, "a"), _machine(tmp_path, "b")
    check = encode_check(ComputeChecksum(1))
    put = encode_command(Put(b"k", b"v"))
    later = encode_command(Put(b"k", b"later"))
    assert a.apply(_entries(put, check, later))[1] == {"check": 1}
    b.apply(_entries(put, check))  # b has not applied index 3 yet: same digest at 2
    assert a.checks[2].result() == b.checks[2].result()
    b.apply(_entries(put, check, encode_command(Put(b"k", b"other"))))  # stale: skipped
    c = _machine(tmp_path, "c")
    c.apply(_entries(encode_command(Put(b"k", b"diverged")), check))
    assert c.checks[2].result() != a.checks[2].result()


def test_a_rebuild_installs_the_leaders_state_never_going_back(tmp_path: Path) -> None:
    leader, follower = _machine(tmp_path, "l"), _machine(tmp_path, "f")
    leader.apply(_entries(encode_command(Put(b"k", b"good")), encode_command(Put(b"j", b"x"))))
    follower.apply(_entries(encode_command(Put(b"k", b"bad"))))
    follower.engine.mark_corrupt(1, "test")
    index, state = leader.export_state()
    assert follower.install_state(index, state)
    assert follower.engine.get(1, b"k") == b"good" and 1 not in follower.engine.corrupt
    assert follower.engine.applied_index(1) == 2
    follower.apply(_entries(b"", b"", encode_command(Put(b"z", b"1"))))  # now at 3
    assert not follower.install_state(index, state)  # would undo index 3
