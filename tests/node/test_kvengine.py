"""KvEngine: the applied state of a node's shard replicas, its snapshots and slot moves."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardset_node.storage.kvengine import KvEngine, StaleIndex
from shardset_node.storage.snapshot import SnapshotCorrupt, SnapshotMismatch, write_snapshot
from shardset_proto.commands import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Cas,
    Command,
    Delete,
    Put,
    Result,
    SizeLimitError,
)
from shardset_proto.slots import slot_of


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[KvEngine]:
    with KvEngine(tmp_path / "state.db") as e:
        yield e


def _state(e: KvEngine, shard: int) -> list[tuple[bytes, bytes]]:
    return e.scan(shard, b"", None, 1 << 30)


def test_apply_get_scan(engine: KvEngine) -> None:
    results = engine.apply(1, 1, [Put(b"b", b"2"), Put(b"a", b"1"), Put(b"c", b"3")])
    assert results == [{"prev_exists": False}] * 3
    assert engine.apply(1, 2, [Put(b"a", b"1'"), Delete(b"c"), Delete(b"zz")]) == [
        {"prev_exists": True},
        {"existed": True},
        {"existed": False},
    ]
    assert engine.get(1, b"a") == b"1'"
    assert engine.get(1, b"c") is None
    assert engine.scan(1, b"", None, 10) == [(b"a", b"1'"), (b"b", b"2")]
    assert engine.scan(1, b"a\x00", None, 10) == [(b"b", b"2")]
    assert engine.scan(1, b"", b"b", 10) == [(b"a", b"1'")]
    assert engine.scan(1, b"", None, 1) == [(b"a", b"1'")]
    assert engine.scan(1, b"", None, 0) == []
    assert engine.applied_index(1) == 2


def test_shards_are_separate_namespaces(engine: KvEngine) -> None:
    engine.apply(1, 5, [Put(b"k", b"one")])
    engine.apply(2, 3, [Put(b"k", b"two")])
    assert (engine.get(1, b"k"), engine.get(2, b"k"), engine.get(3, b"k")) == (b"one", b"two", None)
    assert (engine.applied_index(1), engine.applied_index(2), engine.applied_index(3)) == (5, 3, 0)
    engine.drop_shard(1)
    assert engine.get(1, b"k") is None
    assert engine.applied_index(1) == 0
    assert engine.get(2, b"k") == b"two"


def test_scan_orders_keys_as_bytes(engine: KvEngine) -> None:
    keys = [b"\xff", b"", b"a", b"a\x00", b"\x00", b"B", b"ab"]
    engine.apply(1, 1, [Put(k, k) for k in keys])
    assert [k for k, _ in _state(engine, 1)] == sorted(keys)


def test_applied_index_and_data_survive_reopen(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "s.db") as e:
        e.apply(4, 10, [Put(b"k", b"v")])
        e.apply(4, 12, [])  # an entry with no commands still advances the index
        e.sync()
    with KvEngine(tmp_path / "s.db") as e:
        assert e.applied_index(4) == 12
        assert e.get(4, b"k") == b"v"


def test_stale_index_is_refused_and_changes_nothing(engine: KvEngine) -> None:
    engine.apply(1, 3, [Put(b"k", b"v")])
    for index in (3, 2):
        with pytest.raises(StaleIndex):
            engine.apply(1, index, [Put(b"k", b"other")])
    assert engine.get(1, b"k") == b"v"
    assert engine.applied_index(1) == 3


def test_a_failing_batch_is_rolled_back_with_its_index(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "s.db") as e:
        e.apply(1, 1, [Put(b"k", b"v")])
        bad: list[Command] = [Put(b"k", b"new"), Put(b"x", b"y"), "junk"]  # type: ignore[list-item]
        with pytest.raises(TypeError):
            e.apply(1, 2, bad)
        assert (e.get(1, b"k"), e.get(1, b"x"), e.applied_index(1)) == (b"v", None, 1)
    with KvEngine(tmp_path / "s.db") as e:
        assert (e.get(1, b"k"), e.get(1, b"x"), e.applied_index(1)) == (b"v", None, 1)
        assert e.apply(1, 2, [Put(b"x", b"y")]) == [{"prev_exists": False}]


def test_size_limits(engine: KvEngine) -> None:
    big_key, big_value = b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES
    engine.apply(1, 1, [Put(big_key, big_value)])
    assert engine.get(1, big_key) == big_value
    with pytest.raises(SizeLimitError, match="limit is 1024"):
        engine.get(1, big_key + b"k")
    with pytest.raises(SizeLimitError):
        engine.scan(1, big_key + b"k", None, 1)
    with pytest.raises(SizeLimitError, match="value is"):
        Put(b"k", big_value + b"v")


def test_idempotent_retry_applies_once_and_returns_the_original(engine: KvEngine) -> None:
    assert engine.apply(1, 1, [Put(b"k", b"v1", idem=b"c1:1")]) == [{"prev_exists": False}]
    engine.apply(1, 2, [Put(b"k", b"v2")])
    # The retry of c1:1 must not overwrite v2 and must report what the first attempt saw.
    assert engine.apply(1, 3, [Put(b"k", b"v1", idem=b"c1:1")]) == [{"prev_exists": False}]
    assert engine.get(1, b"k") == b"v2"
    cas = Cas(b"k", b"v2", b"v3", idem=b"c1:2")
    assert engine.apply(1, 4, [cas, cas]) == [{"ok": True, "current": b"v3"}] * 2
    assert engine.apply(1, 5, [Delete(b"k", idem=b"c1:3"), Delete(b"k", idem=b"c1:3")]) == [
        {"existed": True}
    ] * 2
    # Same idem key, another shard: a different namespace.
    assert engine.apply(2, 1, [Put(b"k", b"v1", idem=b"c1:1")]) == [{"prev_exists": False}]


def test_idempotency_survives_reopen(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "s.db") as e:
        e.apply(1, 1, [Cas(b"k", None, b"v", idem=b"i")])
    with KvEngine(tmp_path / "s.db") as e:
        assert e.apply(1, 2, [Cas(b"k", None, b"v", idem=b"i")]) == [{"ok": True, "current": b"v"}]


def test_idempotency_records_are_evicted_oldest_first(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "s.db", idem_capacity=3) as e:
        e.apply(1, 1, [Put(b"k", b"first", idem=b"a")])
        e.apply(1, 2, [Put(b"x", b"-", idem=i) for i in (b"b", b"c")])
        assert e.apply(1, 3, [Put(b"k", b"again", idem=b"a")]) == [{"prev_exists": False}]
        assert e.get(1, b"k") == b"first"  # still remembered: 3 records
        e.apply(1, 4, [Put(b"x", b"-", idem=b"d")])  # evicts "a"
        assert e.apply(1, 5, [Put(b"k", b"again", idem=b"a")]) == [{"prev_exists": True}]
        assert e.get(1, b"k") == b"again"


def _run_batched(path: Path, cmds: list[Command], cuts: list[int]) -> tuple[list[Result], object]:
    with KvEngine(path, idem_capacity=4) as e:
        results: list[Result] = []
        bounds = [0, *sorted(set(cuts)), len(cmds)]
        for index, (lo, hi) in enumerate(itertools.pairwise(bounds), 1):
            results += e.apply(1, index, cmds[lo:hi])
        return results, _state(e, 1)


keys = st.sampled_from([b"a", b"b", b"c"])
values = st.none() | st.sampled_from([b"1", b"2"])
idem_keys = st.none() | st.sampled_from([b"i1", b"i2", b"i3", b"i4", b"i5", b"i6"])
command_lists = st.lists(
    st.one_of(
        st.builds(Put, keys, st.sampled_from([b"1", b"2"]), idem_keys),
        st.builds(Delete, keys, idem_keys),
        st.builds(Cas, keys, values, values, idem_keys),
    ),
    max_size=30,
)


@settings(max_examples=40)
@given(command_lists, st.lists(st.integers(0, 30), max_size=6))
def test_results_do_not_depend_on_how_entries_are_batched(
    cmds: list[Command], cuts: list[int]
) -> None:
    # Replicas may group log entries into apply calls differently; with a small
    # idempotency capacity, eviction must still give every replica the same answers.
    cuts = [c for c in cuts if c <= len(cmds)]
    with tempfile.TemporaryDirectory() as d:
        one = _run_batched(Path(d) / "one.db", cmds, [])
        many = _run_batched(Path(d) / "many.db", cmds, cuts)
    assert one == many


class Model:
    """A dict-based reference for the engine's semantics, written independently of it."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.seen: dict[bytes, Result] = {}

    def apply(self, cmd: Command) -> Result:
        if cmd.idem is not None and cmd.idem in self.seen:
            return self.seen[cmd.idem]
        result = self._apply(cmd)
        if cmd.idem is not None:
            self.seen[cmd.idem] = result
        return result

    def _apply(self, cmd: Command) -> Result:
        old = self.data.get(cmd.key)
        if isinstance(cmd, Put):
            self.data[cmd.key] = cmd.value
            return {"prev_exists": old is not None}
        if isinstance(cmd, Delete):
            return {"existed": self.data.pop(cmd.key, None) is not None}
        if old != cmd.expected:
            return {"ok": False, "current": old}
        if cmd.new is None:
            self.data.pop(cmd.key, None)
        else:
            self.data[cmd.key] = cmd.new
        return {"ok": True, "current": cmd.new}


@settings(max_examples=60)
@given(st.lists(command_lists, max_size=6))
def test_random_command_sequences_match_a_dict_model(batches: list[list[Command]]) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as d, KvEngine(Path(d) / "s.db") as e:
        for index, batch in enumerate(batches, 1):
            assert e.apply(7, index, batch) == [model.apply(c) for c in batch]
            assert _state(e, 7) == sorted(model.data.items())
        for key in (b"a", b"b", b"c"):
            assert e.get(7, key) == model.data.get(key)


def _filled(e: KvEngine, shard: int, n: int, index: int = 1) -> dict[bytes, bytes]:
    data = {f"key{i:05}".encode(): f"value{i}".encode() * 10 for i in range(n)}
    e.apply(shard, index, [Put(k, v) for k, v in data.items()])
    return data


def test_snapshot_round_trip(tmp_path: Path) -> None:
    with KvEngine(tmp_path / "a.db") as a, KvEngine(tmp_path / "b.db") as b:
        data = _filled(a, 3, 500, index=40)
        a.apply(3, 41, [Delete(b"key00000", idem=b"del-0")])
        del data[b"key00000"]
        info = a.export_snapshot(3, tmp_path / "snap")
        assert (info.shard, info.applied_index, info.key_count, info.idem_count) == (3, 41, 499, 1)
        assert not info.slots_only and len(info.body_sha256) == 64
        assert not (tmp_path / "snap.tmp").exists()
        b.apply(3, 7, [Put(b"stale", b"gone after import")])
        assert b.import_snapshot(3, tmp_path / "snap") == info
        assert _state(b, 3) == sorted(data.items())
        assert b.applied_index(3) == 41
        # The idempotency table came along: the retry is answered, not re-applied.
        b.apply(3, 42, [Put(b"key00000", b"back")])
        assert b.apply(3, 43, [Delete(b"key00000", idem=b"del-0")]) == [{"existed": True}]
        assert b.get(3, b"key00000") == b"back"


def test_snapshot_of_another_shard_is_refused(tmp_path: Path, engine: KvEngine) -> None:
    _filled(engine, 1, 3)
    engine.export_snapshot(1, tmp_path / "snap")
    with pytest.raises(SnapshotMismatch, match="shard 1, not 2"):
        engine.import_snapshot(2, tmp_path / "snap")


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: _flip(p, p.stat().st_size // 2), "sha256"),  # a byte in the body
        (lambda p: _flip(p, p.stat().st_size - 1), "sha256"),  # the last byte
        (lambda p: _flip(p, 20), "crc32"),  # the header's applied index
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "body is"),  # truncated body
        (lambda p: p.write_bytes(p.read_bytes()[:50]), "shorter than the header"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00"), "body is"),  # trailing garbage
        (lambda p: _flip(p, 0), "magic"),
    ],
)
def test_corrupt_snapshot_is_refused_and_the_shard_is_untouched(
    tmp_path: Path, damage: object, reason: str
) -> None:
    with KvEngine(tmp_path / "a.db") as a, KvEngine(tmp_path / "b.db") as b:
        _filled(a, 1, 200, index=9)
        snap = tmp_path / "snap"
        a.export_snapshot(1, snap)
        damage(snap)  # type: ignore[operator]
        b.apply(1, 3, [Put(b"mine", b"kept", idem=b"i")])
        with pytest.raises(SnapshotCorrupt, match=reason) as err:
            b.import_snapshot(1, snap)
        assert err.value.path == snap and reason in err.value.reason
        assert _state(b, 1) == [(b"mine", b"kept")]
        assert b.applied_index(1) == 3
        assert b.apply(1, 4, [Put(b"mine", b"x", idem=b"i")]) == [{"prev_exists": False}]


def test_missing_snapshot_file_is_reported_as_corrupt(tmp_path: Path, engine: KvEngine) -> None:
    with pytest.raises(SnapshotCorrupt, match="cannot read"):
        engine.import_snapshot(1, tmp_path / "nope")


def test_move_slots_between_shards(tmp_path: Path, engine: KvEngine) -> None:
    data = _filled(engine, 1, 300)
    engine.apply(1, 2, [Put(b"key00001", b"changed", idem=b"move-me")])
    data[b"key00001"] = b"changed"
    moving = {slot_of(k) for k in list(data)[:100]}
    moved = {k: v for k, v in data.items() if slot_of(k) in moving}
    engine.apply(2, 1, [Put(b"dest-own", b"x")])

    info = engine.export_slots(1, moving, tmp_path / "slots")
    assert info.slots_only and info.key_count == len(moved) and info.idem_count == 1
    with pytest.raises(SnapshotMismatch):
        engine.import_snapshot(1, tmp_path / "slots")
    assert engine.import_slots(2, 5, tmp_path / "slots") == info
    assert engine.delete_slots(1, 3, moving) == len(moved)

    assert _state(engine, 2) == sorted([*moved.items(), (b"dest-own", b"x")])
    assert _state(engine, 1) == sorted((k, v) for k, v in data.items() if k not in moved)
    assert (engine.applied_index(1), engine.applied_index(2)) == (3, 5)
    # The idempotency record moved with its key's slot.
    retry = Put(b"key00001", b"changed", idem=b"move-me")
    assert engine.apply(2, 6, [retry]) == [{"prev_exists": True}]
    assert engine.apply(1, 4, [retry]) == [{"prev_exists": False}]


def test_slot_import_is_verified_first(tmp_path: Path, engine: KvEngine) -> None:
    _filled(engine, 1, 50)
    engine.export_slots(1, set(range(16384)), tmp_path / "slots")
    _flip(tmp_path / "slots", 200)
    with pytest.raises(SnapshotCorrupt):
        engine.import_slots(2, 1, tmp_path / "slots")
    assert engine.applied_index(2) == 0 and _state(engine, 2) == []


def test_invalid_arguments(engine: KvEngine) -> None:
    with pytest.raises(ValueError, match="shard"):
        engine.get(-1, b"k")
    with pytest.raises(ValueError, match="limit"):
        engine.scan(1, b"", None, -1)
    with pytest.raises(ValueError, match="idem_capacity"):
        KvEngine(engine.path, idem_capacity=0)


@pytest.mark.parametrize(
    ("kv", "reason"),
    [
        ([[b"b", b"1"], [b"a", b"2"]], "out of order"),
        ([[b"a", b"1"], [b"a", b"2"]], "out of order"),  # a duplicate key
        ([[b"a", 1]], "bad value"),
        ([[b"a"]], "bad key record"),
    ],
)
def test_well_checksummed_but_malformed_body_is_rolled_back(
    tmp_path: Path, engine: KvEngine, kv: list[list[object]], reason: str
) -> None:
    # A writer bug rather than disk damage: the checksums match, the records do not. The
    # load has already cleared the shard when it finds out, so this checks the rollback.
    write_snapshot(tmp_path / "snap", (0, 1, 99, 0), kv, [])
    engine.apply(1, 3, [Put(b"mine", b"kept")])
    with pytest.raises(SnapshotCorrupt, match=reason):
        engine.import_snapshot(1, tmp_path / "snap")
    assert _state(engine, 1) == [(b"mine", b"kept")]
    assert engine.applied_index(1) == 3
