"""Fault scenarios on a real 3-node cluster (4 shards, 3 replicas, fsync on).

Each scenario runs a concurrent put/get/cas workload while a fault happens, then, after
quiescence: the replicas converge (same applied index per group on every node, same rows
in every replica's state), the final reads agree with every replica, no acknowledged write
is lost, and the recorded history is linearizable (the simulator's checker).

Timings are printed with an ``[integration]`` prefix (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from clusterkit import (
    Layout,
    Workload,
    ack_gap,
    check_end_state,
    installed_snapshots,
    layout,
    leader_counts,
    log,
    segment_records,
    shard_leaders,
    snap_files,
    snap_index,
    stable_leaders,
    torn_tail_events,
    wait_acks_on_every_shard,
    wait_caught_up,
    wait_converged,
)

from shardset.client import Client, ShardsetError
from shardset.local import LocalCluster
from shardset_node.storage.raftstore import RecordKind
from shardset_node.storage.wal import frame
from shardset_sim.linearizability import Op

SCENARIO_TIMEOUT = 150.0  # a bound on each test's wall time, far above the expected ~20 s
PROBE_TIMEOUT = 3.0  # a direct write to a cut-off node: any answer but 200, or none
FAILOVER_LIMIT = 10.0
# Client ids of direct writes to a cut-off node, in the history: while a majority exists
# elsewhere, its new leaders overwrite what the minority appended, so those writes must
# never show; with no majority anywhere, a write may still commit after healing.
MINORITY_PROBE, NO_MAJORITY_PROBE = (
    500,
    600,
)  # "keeps serving within a few seconds", with room for a busy machine


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, SCENARIO_TIMEOUT))


async def start(
    cluster: LocalCluster, clients: int = 4, protocol: str = "http"
) -> tuple[Layout, Workload]:
    lay = await layout(cluster)
    wl = Workload(
        cluster.endpoints, lay.keys("key", per_shard=2), clients=clients, protocol=protocol
    )
    await stable_leaders(cluster, lay.shards)
    wl.start()
    return lay, wl


# ------------------------------------------------------------------------------ 1
@pytest.mark.parametrize("protocol", ["http", "wire"])
def test_kill_leader_of_most_shards(cluster_factory: Any, protocol: str) -> None:
    """kill -9 of the node leading most shards while the workload runs (over either
    client protocol): the other two elect new leaders and keep acknowledging writes
    within a few seconds."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, wl = await start(cluster, protocol=protocol)
        await asyncio.sleep(3.0)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = max(counts, key=lambda n: (counts[n], -n))
        led = sorted(s for s, n in leaders.items() if n == victim)
        t_kill = time.monotonic()
        cluster.stop_node(victim, kill=True)
        log(f"kill -9 node {victim}, leader of shards {led} (leaders were {leaders})")

        recovery = await wait_acks_on_every_shard(wl, lay, t_kill, timeout=30.0)
        await asyncio.sleep(1.0)
        gap, a, b = ack_gap(wl.history, t_kill, time.monotonic())
        worst = max(recovery[s] for s in led)
        log(
            f"failover: first acknowledged write invoked after the kill, per shard (s): "
            f"{ {s: round(t, 2) for s, t in sorted(recovery.items())} }; "
            f"worst shard the victim led: {worst:.2f}s; longest gap between acknowledged "
            f"writes (any shard): {gap:.2f}s ({a - t_kill:+.2f}s to {b - t_kill:+.2f}s "
            f"around the kill)"
        )
        assert worst < FAILOVER_LIMIT, f"shards {led} took {worst:.1f}s to accept writes again"
        new = await stable_leaders(cluster, lay.shards)
        assert victim not in new.values(), new
        await wl.stop()

        t_restart = time.monotonic()
        cluster.start_node(victim)
        await wait_caught_up(cluster, victim, lay.shards)
        log(f"node {victim} restarted and caught up in {time.monotonic() - t_restart:.2f}s")
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


# ------------------------------------------------------------------------------ 2
def test_restart_node_with_its_data(cluster_factory: Any) -> None:
    """Stop a node (SIGTERM) while the workload runs; restart it on its data directory:
    it rejoins every group and catches up."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, wl = await start(cluster)
        await asyncio.sleep(2.0)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = min(counts, key=lambda n: (counts[n], -n))
        t_stop = time.monotonic()
        await asyncio.to_thread(cluster.stop_node, victim)
        log(
            f"stopped node {victim} (led {counts[victim]} shards) in "
            f"{time.monotonic() - t_stop:.2f}s"
        )
        await wait_acks_on_every_shard(wl, lay, time.monotonic(), timeout=30.0)
        await asyncio.sleep(3.0)  # writes go on without it

        t_start = time.monotonic()
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        ready = time.monotonic() - t_start
        caught = await wait_caught_up(cluster, victim, lay.shards)
        log(
            f"node {victim}: ready {ready:.2f}s after restart, caught up with the leaders "
            f"{ready + caught:.2f}s after restart (workload running)"
        )
        await asyncio.sleep(1.0)
        await wl.stop()
        # It rejoined: every leader sees it replicating.
        leaders = await stable_leaders(cluster, lay.shards)
        async with aiohttp.ClientSession() as session:
            for shard, leader in leaders.items():
                url = f"{cluster.node(leader).api}/v1/status"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    view = (await resp.json())["groups"][str(shard)]
                if leader != victim:
                    assert view["followers"][str(victim)]["state"] == "replicate", view
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


# ------------------------------------------------------------------------------ 3
async def _probe_writes(
    cluster: LocalCluster, node: int, keys: list[str], client: int = MINORITY_PROBE
) -> list[Op]:
    """PUT straight to `node` (no redirects followed, no retries): answers and indeterminate
    ops for the history. Nothing a minority node is asked may be acknowledged."""
    ops = []
    async with aiohttp.ClientSession() as session:

        async def one(key: str) -> tuple[str, str, float, int | str]:
            value = f"probe-{node}-{key}-{time.monotonic_ns()}"
            invoke = time.monotonic()
            try:
                async with session.put(
                    f"{cluster.node(node).api}/v1/kv/{key}",
                    data=value.encode(),
                    headers={"Idempotency-Key": f"probe:{value}"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
                ) as resp:
                    await resp.read()
                    return key, value, invoke, resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                return key, value, invoke, e.__class__.__name__

        answers = await asyncio.gather(*(one(k) for k in keys))
    for key, value, invoke, status in answers:
        assert status != 200, f"node {node}, cut off from the majority, acknowledged {key}"
        ops.append(Op(client + node, "put", key, value, invoke=invoke))  # indeterminate
    return ops


async def _partition_phase(
    cluster: LocalCluster, lay: Layout, wl: Workload, minority: list[int], label: str
) -> None:
    majority = [n for n in cluster.node_ids if n not in minority]
    assert cluster.net is not None
    cluster.partition(minority, majority)
    t_cut = time.monotonic()
    probes = asyncio.create_task(_probe_writes(cluster, minority[0], lay.keys("probe", 1)))
    recovery = await wait_acks_on_every_shard(wl, lay, t_cut, timeout=30.0)
    led = await shard_leaders(cluster, majority)
    assert sorted(led) == lay.shards, f"the majority leads only shards {led}"
    await asyncio.sleep(1.0)
    answered = await probes
    wl.history.extend(answered)
    log(
        f"{label}: node(s) {minority} cut off; the majority {majority} acknowledged writes on "
        f"every shard, first after (s) { {s: round(t, 2) for s, t in sorted(recovery.items())} }; "
        f"the minority acknowledged none of {len(answered)} direct writes"
    )
    cluster.heal()
    t_heal = time.monotonic()
    await wait_acks_on_every_shard(wl, lay, t_heal, timeout=30.0)
    log(f"{label}: healed")


def test_partitions(cluster_factory: Any) -> None:
    """Through per-link fault proxies: (a) the node leading most shards is cut off (the
    leaders end up in the minority; the majority elects new ones and goes on writing);
    (b) a node leading no shard is cut off; (c) every node is cut off from every other (no
    majority anywhere: no write is acknowledged). Each is healed, and writes continue."""
    cluster = cluster_factory(fault_proxies=True)
    assert cluster.net is not None

    async def scenario() -> None:
        lay, wl = await start(cluster)
        await asyncio.sleep(2.0)
        # The peers really talk through the proxies.
        assert all(c > 0 for c in cluster.net.connections().values()), cluster.net.connections()

        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        busiest = max(counts, key=lambda n: (counts[n], -n))
        await _partition_phase(cluster, lay, wl, [busiest], f"(a) leader of {counts[busiest]}")

        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        others = [n for n in cluster.node_ids if n != busiest]
        idlest = min(others, key=lambda n: (counts[n], n))
        await _partition_phase(cluster, lay, wl, [idlest], f"(b) leader of {counts[idlest]}")

        # (c) no majority anywhere.
        ids = cluster.node_ids
        for i, n in enumerate(ids):
            cluster.partition([n], ids[i + 1 :])
        t_cut = time.monotonic()
        probes = await asyncio.gather(
            *(_probe_writes(cluster, n, lay.keys("probe", 1), NO_MAJORITY_PROBE) for n in ids)
        )
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - t_cut)))
        t_heal = time.monotonic()
        during = [
            op
            for op in wl.acked_writes()
            if op.invoke > t_cut and op.complete is not None and op.complete < t_heal
        ]
        assert not during, f"writes acknowledged with no majority anywhere: {during[:3]}"
        for ops in probes:
            wl.history.extend(ops)
        cluster.heal()
        after = await wait_acks_on_every_shard(wl, lay, time.monotonic(), timeout=30.0)
        log(
            f"(c) total partition for {t_heal - t_cut:.1f}s: no write acknowledged; after "
            f"healing, writes on every shard within {max(after.values()):.2f}s"
        )
        await asyncio.sleep(1.0)
        await wl.stop()
        log(f"client errors: {dict(wl.errors)}")
        final = await check_end_state(cluster, wl.keys + lay.keys("probe", 1), wl.history)
        # What a minority was asked while a majority existed never became visible.
        probed = {op.value for op in wl.history if MINORITY_PROBE <= op.client < NO_MAJORITY_PROBE}
        seen = {op.result for op in wl.history if op.kind == "get"} | set(final.values())
        assert not probed & seen, f"a write the minority never acknowledged shows: {probed & seen}"

    run(scenario())


# ------------------------------------------------------------------------------ 4
async def _bulk_put(
    cluster: LocalCluster, keys: list[str], history: list[Op], concurrency: int = 8
) -> None:
    queue = list(keys)
    async with Client(cluster.endpoints, timeout=5.0, attempts=20) as client:

        async def worker(cid: int) -> None:
            while queue:
                key = queue.pop()
                value = f"bulk-{key}"
                invoke = time.monotonic()
                try:
                    await asyncio.wait_for(client.put(key, value.encode()), 15.0)
                except (ShardsetError, TimeoutError):
                    history.append(Op(cid, "put", key, value, invoke=invoke))
                    continue
                history.append(Op(cid, "put", key, value, invoke=invoke, complete=time.monotonic()))

        await asyncio.gather(*(worker(200 + i) for i in range(concurrency)))


def _compacted_past(cluster: LocalCluster, leaders: dict[int, int], past: dict[int, int]) -> bool:
    """Has every shard's leader taken a snapshot beyond `past[shard]`?"""
    for shard, leader in leaders.items():
        names = snap_files(cluster.node_dir(leader) / "raft" / "snap")
        best = max((snap_index(n)[2] for n in names if snap_index(n)[0] == shard), default=0)
        if best <= past[shard] + 1:
            return False
    return True


def test_follower_needs_a_snapshot(cluster_factory: Any) -> None:
    """With --compact-every 50: a follower is down while a few hundred keys are written, so
    the leaders compact their logs past it; restarted, it catches up from a snapshot the
    leader streams (its WAL records a SNAPSHOT install, its snap/ holds the file)."""
    cluster = cluster_factory(node_args=["--compact-every", "50"])

    async def scenario() -> None:
        lay, wl = await start(cluster, clients=3)
        await asyncio.sleep(1.5)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = min(counts, key=lambda n: (counts[n], -n))
        await asyncio.to_thread(cluster.stop_node, victim)
        applied_at_stop = {
            int(g): v["applied"]
            for g, v in (await _last_status(cluster, victim))["groups"].items()
            if g != "meta"
        }
        log(f"stopped follower {victim}; its applied index per shard: {applied_at_stop}")

        leaders = await stable_leaders(cluster, lay.shards)
        written = 0
        for batch in range(8):  # a few hundred keys, until every leader compacted past it
            keys = [f"bulk-{batch}-{i:03d}" for i in range(100)]
            await _bulk_put(cluster, keys, wl.history)
            written += len(keys)
            if _compacted_past(cluster, leaders, applied_at_stop):
                break
        assert _compacted_past(cluster, leaders, applied_at_stop), "the leaders never compacted"
        log(f"wrote {written} keys while node {victim} was down")

        t_start = time.monotonic()
        cluster.start_node(victim)
        snap_dir = cluster.node_dir(victim) / "raft" / "snap"
        seen_files: set[str] = set()
        watcher_stop = asyncio.Event()

        async def watch() -> None:  # snap/ as it changes, in case files get pruned later
            for _ in range(3000):
                seen_files.update(snap_files(snap_dir))
                if watcher_stop.is_set():
                    return
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        caught = await wait_caught_up(cluster, victim, lay.shards)
        catch_up = time.monotonic() - t_start
        await wl.stop()
        watcher_stop.set()
        await watcher
        seen_files.update(snap_files(snap_dir))

        installed = [
            (g, term, index)
            for g, term, index in installed_snapshots(cluster.node_dir(victim) / "raft" / "wal")
            if g in applied_at_stop and index > applied_at_stop[g]
        ]
        log(
            f"node {victim} caught up {catch_up:.2f}s after restart ({caught:.2f}s after "
            f"ready); snapshots installed from leaders (group, term, index): {installed}"
        )
        got = {g for g, _, _ in installed}
        assert got == set(lay.shards), f"no snapshot installed for shards {set(lay.shards) - got}"
        same_bytes = 0
        for g, term, index in installed:
            name = f"snap-{g}-{term}-{index}.snap"
            assert name in seen_files, f"{name} never appeared in {snap_dir}: {seen_files}"
            # The leader's own file of that snapshot, if it still keeps it, is the same.
            theirs = cluster.node_dir(leaders[g]) / "raft" / "snap" / name
            mine = snap_dir / name
            if theirs.exists() and mine.exists():
                assert theirs.read_bytes() == mine.read_bytes(), f"{name} differs from the leader's"
                same_bytes += 1
        log(f"{same_bytes} of them still on both sides, byte for byte equal")
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


async def _last_status(cluster: LocalCluster, node: int) -> dict[str, Any]:
    """The applied index a stopped node's state file holds, shaped like /v1/status."""
    path = cluster.node_dir(node) / "kv.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    try:
        rows = db.execute("SELECT shard, applied FROM shard_meta").fetchall()
    finally:
        db.close()
    return {"groups": {str(s): {"applied": int(a)} for s, a in rows}}


# ------------------------------------------------------------------------------ 5
def _last_segment(cluster: LocalCluster, node: int) -> Path:
    return sorted((cluster.node_dir(node) / "raft" / "wal").glob("wal-*.log"))[-1]


def _check_torn_tail_logged(cluster: LocalCluster, node: int, offset: int, segment: Path) -> None:
    cut = torn_tail_events(cluster.log_path(node), offset)
    assert cut, f"no wal_torn_tail_truncated line in {cluster.log_path(node)} after the restart"
    assert cut[0]["file"] == str(segment), cut[0]
    assert cut[0]["level"] == "warning", cut[0]
    log(f"log line: {json.dumps(cut[0])}")


def test_corrupt_wal_tail(cluster_factory: Any) -> None:
    """kill -9 a node while the workload runs, then damage the tail of its last WAL
    segment as a crash in mid-write would: a record cut short, then garbage. At start it
    logs the cut (structlog event wal_torn_tail_truncated) and catches up from its peers."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, wl = await start(cluster)
        await asyncio.sleep(2.5)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = min(counts, key=lambda n: (counts[n], -n))
        cluster.stop_node(victim, kill=True)
        await asyncio.sleep(2.0)  # writes go on without it

        segment = _last_segment(cluster, victim)
        size = segment.stat().st_size
        torn = frame(msgpack.packb([1, 1, 10**6, ["never synced"]]) + bytes(300))[:-40]
        with segment.open("ab") as f:
            f.write(torn + b"\xde\xad\xbe\xef garbage " * 8)
        added = segment.stat().st_size - size
        log(f"node {victim}: appended a torn record and garbage ({added} bytes) to {segment.name}")

        offset = cluster.log_path(victim).stat().st_size
        t_start = time.monotonic()
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        ready = time.monotonic() - t_start
        caught = await wait_caught_up(cluster, victim, lay.shards)
        log(
            f"node {victim} ready {ready:.2f}s after restart, caught up with the leaders "
            f"{ready + caught:.2f}s after restart"
        )
        _check_torn_tail_logged(cluster, victim, offset, segment)
        cut = torn_tail_events(cluster.log_path(victim), offset)[0]
        assert (cut["offset"], cut["dropped_bytes"]) == (size, added), cut
        await asyncio.sleep(1.0)
        await wl.stop()
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


def test_corrupt_tail_of_acknowledged_entries_is_refilled_from_peers(cluster_factory: Any) -> None:
    """Flip bytes at the end of the last record of a follower's WAL, where that record
    holds log entries the follower had acknowledged (the cluster was quiet when it was
    killed, so the leaders saw every acknowledgement). The cut is logged, and the node
    must still catch up from its peers, with no writes needed to nudge it."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay, wl = await start(cluster)
        await asyncio.sleep(2.5)
        await wl.stop()
        await wait_converged(cluster)  # the leaders hold every follower's acknowledgement
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = min(counts, key=lambda n: (counts[n], -n))
        followed = [s for s, n in leaders.items() if n != victim]
        cluster.stop_node(victim, kill=True)

        segment = _last_segment(cluster, victim)
        spans = [
            r
            for r in segment_records(segment)
            if r.kind == RecordKind.ENTRIES and r.group in followed
        ]
        assert spans, f"no entries of shards {followed} in {segment}"
        last = spans[-1]
        with segment.open("r+b") as f:
            f.truncate(last.end)  # as if what followed had never been written
            f.seek(last.end - 1)
            byte = f.read(1)
            f.seek(last.end - 1)
            f.write(bytes([byte[0] ^ 0xFF]))  # the record's checksum no longer matches
            f.write(b"\xde\xad\xbe\xef garbage " * 8)
        log(
            f"node {victim}: corrupted its last record (shard {last.group}'s entries up to "
            f"{last.index}, acknowledged) at the end of {segment.name}"
        )

        offset = cluster.log_path(victim).stat().st_size
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        _check_torn_tail_logged(cluster, victim, offset, segment)
        caught = await wait_caught_up(cluster, victim, lay.shards, timeout=10.0)
        log(f"node {victim} caught up {caught:.2f}s after it was ready")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


def _snapshot_events(logfile: Path, offset: int) -> list[dict[str, Any]]:
    with logfile.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "snapshot_corrupt_skipped":
            events.append(event)
    return events


def test_corrupt_snapshot_file_is_skipped_and_refilled_from_peers(cluster_factory: Any) -> None:
    """With --compact-every 50 a follower holds snapshot files of its shards. Killed, its
    newest snapshot file gets bytes flipped in the middle of its body. At start it logs
    snapshot_corrupt_skipped naming the file, keeps the file aside as *.corrupt (never
    read again), and catches up from its peers; the history stays linearizable."""
    cluster = cluster_factory(node_args=["--compact-every", "50"])

    async def scenario() -> None:
        lay, wl = await start(cluster, clients=3)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = min(counts, key=lambda n: (counts[n], -n))
        snap_dir = cluster.node_dir(victim) / "raft" / "snap"
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            names = {n for n in snap_files(snap_dir) if snap_index(n)[2] > 0}
            if {snap_index(n)[0] for n in names} >= set(lay.shards):
                break  # a compaction snapshot (not the bootstrap one) of every shard
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"node {victim} took no snapshot of every shard in 60 s")
        # A new snapshot's log record becomes durable with the node's next sync; with
        # the workload running that is milliseconds away.
        await asyncio.sleep(1.0)
        cluster.stop_node(victim, kill=True)

        newest = max(snap_files(snap_dir), key=lambda n: snap_index(n)[2])
        assert snap_index(newest)[2] > 0, newest
        # The newest file may not be the one the node loads: its write-ahead log record
        # can still have been waiting for the next sync when the node was killed (a
        # commit-only round does not sync). Corrupt every compaction snapshot of that
        # shard, so whichever the log names is bad.
        group = snap_index(newest)[0]
        corrupted = []
        for name in sorted(snap_files(snap_dir)):
            if snap_index(name)[0] != group or snap_index(name)[2] == 0:
                continue
            path = snap_dir / name
            raw = bytearray(path.read_bytes())
            middle = len(raw) // 2
            raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
            path.write_bytes(bytes(raw))
            corrupted.append(str(path))
        log(f"node {victim}: flipped 8 bytes in the middle of {corrupted}")
        await asyncio.sleep(1.0)  # writes go on without it

        offset = cluster.log_path(victim).stat().st_size
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        events = _snapshot_events(cluster.log_path(victim), offset)
        assert events, f"no snapshot_corrupt_skipped line in {cluster.log_path(victim)}"
        assert events[0]["file"] in corrupted, (events[0], corrupted)
        assert events[0]["level"] == "error", events[0]
        log(f"log line: {json.dumps(events[0])}")
        skipped = Path(events[0]["file"])
        assert skipped.with_name(skipped.name + ".corrupt").exists(), "not set aside"
        caught = await wait_caught_up(cluster, victim, lay.shards)
        log(f"node {victim} caught up {caught:.2f}s after it was ready")
        await asyncio.sleep(1.0)
        await wl.stop()
        log(f"client errors: {dict(wl.errors)}")
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())
