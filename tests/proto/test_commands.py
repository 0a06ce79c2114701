"""The replicated command format, its size limits, and the pure per-key transition."""

from __future__ import annotations

import contextlib

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardset_proto.commands import (
    MAX_IDEM_BYTES,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Cas,
    Command,
    CommandError,
    Delete,
    Put,
    Result,
    SizeLimitError,
    decode_command,
    decode_result,
    encode_command,
    encode_result,
    execute,
    make_idem,
)
from shardset_proto.slots import SLOTS, slot_of

small = st.binary(max_size=16)
opt = st.none() | small
idems = st.none() | st.binary(min_size=1, max_size=16)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Put, small, small, idems),
    st.builds(Delete, small, idems),
    st.builds(Cas, small, opt, opt, idems),
)


@given(commands)
def test_encode_decode_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@given(st.binary(max_size=64))
def test_decode_of_arbitrary_bytes_is_a_command_or_command_error(data: bytes) -> None:
    with contextlib.suppress(CommandError):
        decode_command(data)


@pytest.mark.parametrize(
    "fields",
    [
        [],
        [9, b"k"],  # unknown op
        [1, b"k", b"v"],  # put missing idem
        [1, b"k", b"v", None, None],  # put with an extra field
        [1, "k", b"v", None],  # key as str, not bin
        [1, b"k", None, None],  # put without a value
        [2, b"k", b""],  # empty idem
        [True, b"k", None],  # bool is not an op code
        {"op": 1},
        b"raw",
    ],
)
def test_decode_rejects_malformed_fields(fields: object) -> None:
    with pytest.raises(CommandError):
        decode_command(msgpack.packb(fields, use_bin_type=True))


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x93\x01", encode_command(Delete(b"k")) + b"\x00"]
)
def test_decode_rejects_bad_msgpack(data: bytes) -> None:
    with pytest.raises(CommandError):
        decode_command(data)


def test_size_limits_are_inclusive_and_clear() -> None:
    Put(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES, b"i" * MAX_IDEM_BYTES)
    with pytest.raises(SizeLimitError, match="key is 1025 bytes; the limit is 1024"):
        Put(b"k" * (MAX_KEY_BYTES + 1), b"v")
    with pytest.raises(SizeLimitError, match="value is 1048577 bytes"):
        Put(b"k", b"v" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(SizeLimitError, match="new is"):
        Cas(b"k", None, b"v" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(SizeLimitError, match="idem is"):
        Delete(b"k", b"i" * (MAX_IDEM_BYTES + 1))
    with pytest.raises(CommandError, match="key must be bytes"):
        Put("k", b"v")  # type: ignore[arg-type]


def test_size_limits_also_apply_when_decoding() -> None:
    data = msgpack.packb([1, b"k" * (MAX_KEY_BYTES + 1), b"v", None], use_bin_type=True)
    with pytest.raises(SizeLimitError):
        decode_command(data)


def test_put_and_delete_results() -> None:
    assert execute(Put(b"k", b"v"), None).result == {"prev_exists": False}
    out = execute(Put(b"k", b"v"), b"old")
    assert (out.result, out.write, out.value) == ({"prev_exists": True}, True, b"v")
    assert execute(Delete(b"k"), b"old").result == {"existed": True}
    out = execute(Delete(b"k"), None)
    assert (out.result, out.write) == ({"existed": False}, False)


@pytest.mark.parametrize(
    ("current", "expected", "new", "ok", "after"),
    [
        (None, None, b"n", True, b"n"),  # create if absent
        (None, b"x", b"n", False, None),  # absent key does not match a value
        (b"x", None, b"n", False, b"x"),  # present key does not match "absent"
        (b"x", b"x", b"n", True, b"n"),
        (b"x", b"y", b"n", False, b"x"),
        (b"x", b"x", None, True, None),  # new None deletes on match
        (None, None, None, True, None),  # delete-if-absent: a successful no-op
    ],
)
def test_cas(
    current: bytes | None, expected: bytes | None, new: bytes | None, ok: bool,
    after: bytes | None,
) -> None:
    out = execute(Cas(b"k", expected, new), current)
    assert out.result == {"ok": ok, "current": after}
    assert (out.value if out.write else current) == after


@given(commands, opt)
def test_execute_is_deterministic(cmd: Command, current: bytes | None) -> None:
    assert execute(cmd, current) == execute(cmd, current)


def test_result_round_trip_and_rejects_garbage() -> None:
    results: list[Result] = [{"prev_exists": True}, {"ok": False, "current": None}, {"c": b"x"}]
    for result in results:
        assert decode_result(encode_result(result)) == result
    for bad in (b"\xc1", msgpack.packb([1]), msgpack.packb({"a": 1})):
        with pytest.raises(CommandError):
            decode_result(bad)


def test_make_idem_is_client_then_big_endian_sequence() -> None:
    assert make_idem(b"client-a", 1) == b"client-a" + b"\x00" * 7 + b"\x01"
    assert make_idem(b"c", 1) != make_idem(b"c", 2)


def test_slot_of_matches_redis_cluster() -> None:
    # Values from Redis Cluster (CLUSTER KEYSLOT) and the CRC16/XMODEM check value 0x31C3.
    assert slot_of(b"123456789") == 0x31C3
    assert slot_of(b"foo") == 12182
    assert slot_of(b"bar") == 5061
    assert SLOTS == 16384
    assert all(0 <= slot_of(bytes([i])) < SLOTS for i in range(256))
