"""The consistency checker's verdict, and the check entry's encoding (issue 15)."""

from __future__ import annotations

import pytest

from shardset_node.checker import CORRUPT, judge
from shardset_proto.commands import (
    CommandError,
    ComputeChecksum,
    decode_check,
    decode_command,
    encode_check,
    is_check,
)


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
