"""Read consistency settings and the pure rules behind them: admin/flag validation, the
per-request override, freshness proofs of bounded reads, the choice of a transferee on
shutdown, node ids from StatefulSet host names, and tick catch-up after a loop stall."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from shardset_node.consistency import (
    FreshnessProof,
    ReadPolicy,
    policy_from_body,
    proves,
    resolve,
)
from shardset_node.drain import pick_transferee
from shardset_node.main import id_from_hostname, parse, read_policy
from shardset_node.replication.host import RaftHost
from shardset_proto.errors import ApiError


# --------------------------------------------------------------------- admin body
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"mode": "linearizable", "maxStalenessMs": None}, ReadPolicy("linearizable", None)),
        ({"mode": "eventual"}, ReadPolicy("eventual", None)),
        ({"mode": "bounded", "maxStalenessMs": 250}, ReadPolicy("bounded", 250)),
        ({"mode": "session", "maxStalenessMs": 100}, ReadPolicy("session", 100)),
    ],
)
def test_policy_from_valid_body(body: dict[str, Any], expected: ReadPolicy) -> None:
    assert policy_from_body(body) == expected
    assert expected.view() == {"mode": expected.mode, "maxStalenessMs": expected.max_staleness_ms}


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({}, "mode"),
        ({"mode": "strong"}, "mode"),
        ({"mode": 3}, "mode"),
        ({"mode": "bounded"}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": None}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": 0}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": -5}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": "100"}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": True}, "maxStalenessMs"),
        ({"mode": "bounded", "maxStalenessMs": 1.5}, "maxStalenessMs"),
        ({"mode": "eventual", "maxStaleness": 5}, "maxStaleness"),
    ],
)
def test_policy_from_bad_body_names_the_field(body: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ApiError) as e:
        policy_from_body(body)
    assert e.value.status == 400
    assert e.value.extra["field"] == field_name
    assert field_name in str(e.value)


# --------------------------------------------------------------------- per request
def test_request_mode_overrides_the_node_default() -> None:
    node = ReadPolicy("eventual", None)
    assert resolve(node, None, None) == ("eventual", None)
    assert resolve(node, "linearizable", None) == ("linearizable", None)
    assert resolve(node, "bounded", 40) == ("bounded", 40)


def test_bounded_takes_the_node_bound_or_refuses() -> None:
    assert resolve(ReadPolicy("bounded", 300), None, None) == ("bounded", 300)
    assert resolve(ReadPolicy("bounded", 300), None, 20) == ("bounded", 20)
    assert resolve(ReadPolicy("linearizable", 300), "bounded", None) == ("bounded", 300)
    with pytest.raises(ApiError) as e:
        resolve(ReadPolicy(), "bounded", None)
    assert e.value.status == 400 and "max_staleness_ms" in str(e.value)
    with pytest.raises(ApiError) as e:
        resolve(ReadPolicy(), "snapshot", None)
    assert e.value.status == 400 and e.value.extra["field"] == "consistency"


# --------------------------------------------------------------------- bounded proofs
def test_a_proof_counts_only_once_applied_and_ages_from_when_it_was_asked() -> None:
    proof = FreshnessProof(asked_at=100.0, index=50)
    assert proof.staleness_ms(now=100.2, applied=49) is None  # not applied here yet
    assert proof.staleness_ms(now=100.2, applied=50) == pytest.approx(200.0)
    assert proves(proof, now=100.2, applied=60, bound_ms=250)
    assert not proves(proof, now=100.3, applied=60, bound_ms=250)  # too old by now
    assert not proves(proof, now=100.1, applied=10, bound_ms=250)  # behind its index
    assert not proves(None, now=100.1, applied=10, bound_ms=250)


# --------------------------------------------------------------------- drain
def test_transferee_is_the_most_caught_up_other_voter() -> None:
    voters = frozenset({1, 2, 3})
    assert pick_transferee(1, voters, {1: 90, 2: 80, 3: 85}) == 3
    assert pick_transferee(1, voters, {1: 90, 2: 90, 3: 90}) == 2  # a tie: lowest id
    assert pick_transferee(2, voters, {3: 7}) == 3  # 1 unknown counts as 0
    assert pick_transferee(1, frozenset({1}), {1: 5}) is None  # nobody to hand it to
    assert pick_transferee(1, frozenset({1, 4}), {4: 0}) == 4


# --------------------------------------------------------------------- node flags
@pytest.mark.parametrize(
    ("hostname", "node_id"),
    [("shardset-0", 1), ("my-store-node-12", 13), ("db-3.db-headless.ns.svc.cluster.local", 4)],
)
def test_id_from_statefulset_hostname(hostname: str, node_id: int) -> None:
    assert id_from_hostname(hostname) == node_id


@pytest.mark.parametrize("hostname", ["shardset", "shardset-", "-3", "Shardset-x", "node_1-2x"])
def test_id_from_a_bad_hostname_is_a_clear_error(hostname: str) -> None:
    with pytest.raises(SystemExit) as e:
        id_from_hostname(hostname)
    assert hostname in str(e.value) and "<name>-<ordinal>" in str(e.value)


BASE = ["--data-dir", "d", "--peer", "h:1", "--api", "h:2", "--bootstrap", "b.json"]


def test_flags_default_mode_and_exclusive_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDSET_CONSISTENCY", raising=False)
    monkeypatch.delenv("SHARDSET_MAX_STALENESS_MS", raising=False)
    ns = parse(["--id", "2", *BASE])
    assert read_policy(ns) == ReadPolicy("linearizable", None)
    assert ns.drain_timeout_s == 10.0
    ns = parse(
        ["--id-from-hostname", "--consistency", "bounded", "--max-staleness-ms", "75", *BASE]
    )
    assert ns.id_from_hostname and read_policy(ns) == ReadPolicy("bounded", 75)
    with pytest.raises(SystemExit):
        parse(["--id", "2", "--id-from-hostname", *BASE])
    with pytest.raises(SystemExit):
        parse(BASE)  # neither
    with pytest.raises(SystemExit) as e:
        read_policy(parse(["--id", "1", "--consistency", "bounded", *BASE]))
    assert "--max-staleness-ms" in str(e.value)


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDSET_CONSISTENCY", "bounded")
    monkeypatch.setenv("SHARDSET_MAX_STALENESS_MS", "120")
    monkeypatch.setenv("SHARDSET_DRAIN_TIMEOUT_S", "3.5")
    ns = parse(["--id", "1", *BASE])
    assert read_policy(ns) == ReadPolicy("bounded", 120) and ns.drain_timeout_s == 3.5
    ns = parse(["--id", "1", "--consistency", "eventual", *BASE])
    assert read_policy(ns).mode == "eventual"  # the flag wins over the environment


# --------------------------------------------------------------------- tick catch-up
@dataclass
class _CountingRaft:
    ticks: int = 0

    def tick(self) -> None:
        self.ticks += 1

    def has_ready(self) -> bool:
        return False


@dataclass
class _FakeGroup:
    id: int = 1
    raft: _CountingRaft = field(default_factory=_CountingRaft)
    wake: Any = None

    def take_requests(self) -> None:
        pass


def test_ticks_keep_up_with_real_time_after_a_loop_stall() -> None:
    """A paused leader must not count a lease (in ticks) from before the pause: after the
    loop is blocked for 30 intervals, the host replays the missed ticks."""

    async def scenario() -> int:
        async def sync() -> None:
            pass

        host = RaftHost(sync, tick_interval=0.01)
        group = _FakeGroup()
        host.add(group)  # type: ignore[arg-type]
        await host.start()
        await asyncio.sleep(0.05)
        before = group.raft.ticks
        time.sleep(0.3)  # the event loop is stalled: no tick can run
        await asyncio.sleep(0.03)
        after = group.raft.ticks
        await host.stop()
        return after - before

    gained = asyncio.run(asyncio.wait_for(scenario(), 10.0))
    # Without catch-up one tick follows the stall (a handful in all); with it, ~33.
    assert gained >= 25, gained
