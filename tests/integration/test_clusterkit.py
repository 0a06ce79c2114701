"""The integration harness's own checks, on made-up histories (no cluster)."""

from __future__ import annotations

from clusterkit import Layout, ack_gap, first_ack_after, lost_writes

from shardset_sim.linearizability import Op

LAYOUT = Layout([(0, 8192, 1), (8192, 16384, 2)], {1: [1], 2: [1]})
K1 = next(k for k in (f"k{i}" for i in range(100)) if LAYOUT.shard_of(k) == 1)
K2 = next(k for k in (f"k{i}" for i in range(100)) if LAYOUT.shard_of(k) == 2)


def test_failover_measures_count_writes_invoked_after_the_fault_per_shard() -> None:
    history = [
        Op(1, "put", K1, "a", invoke=0.5, complete=1.5),  # invoked before the fault
        Op(1, "put", K1, "b", invoke=2.0, complete=3.0),
        Op(2, "cas", K2, "c", None, invoke=2.0, complete=2.5, result=False),  # wrote nothing
        Op(2, "put", K2, "d", invoke=2.0),  # indeterminate
    ]
    assert first_ack_after(history, LAYOUT, 1.0) == {1: 2.0}
    assert ack_gap(history, 1.0, 4.0) == (1.5, 1.5, 3.0)


def test_keys_cover_every_shard() -> None:
    keys = LAYOUT.keys("key", per_shard=2)
    assert sorted(LAYOUT.shard_of(k) for k in keys) == [1, 1, 2, 2]


def test_lost_writes() -> None:
    put_a = Op(1, "put", "k", "a", invoke=0.0, complete=1.0)
    put_b = Op(2, "put", "k", "b", invoke=2.0, complete=3.0)
    maybe_c = Op(3, "put", "k", "c", invoke=0.5)  # indeterminate
    failed_cas = Op(3, "cas", "k", "d", "x", invoke=0.5, complete=0.7, result=False)
    delete = Op(4, "delete", "k", invoke=4.0, complete=5.0)
    h = [put_a, put_b, maybe_c, failed_cas]
    assert lost_writes(h, {"k": "b"}) == []
    assert lost_writes(h, {"k": "c"}) == []  # it may have taken effect last
    assert lost_writes(h, {"k": "a"})  # b was acknowledged after a completed
    assert lost_writes(h, {"k": None})  # acknowledged writes, then nothing
    assert lost_writes(h, {"k": "d"})  # a failed cas writes nothing
    assert lost_writes(h, {"k": "zzz"})
    assert lost_writes([*h, delete], {"k": None}) == []
    assert lost_writes([*h, delete], {"k": "b"})
    assert lost_writes([], {"k": None}) == []
