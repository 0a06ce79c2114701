"""Read consistency modes on a real 3-node cluster (4 shards, 3 replicas, fsync on), each
guarantee checked against what clients observed:

* linearizable and lease reads: histories with partitions and leader changes pass the
  linearizability checker;
* session: across leader changes and reads from a lagging follower, a session never reads
  older than its own writes and never goes back in time;
* bounded: the measured staleness of every bounded read stays within the bound, while a
  follower falls behind;
* eventual: a lagging (cut-off) follower really serves a stale read, and keeps answering
  during a partition while linearizable, lease, bounded and session reads there refuse;
* the node's default mode (flag, then admin API, live) and the CLI's per-request mode;
* SIGTERM of a leader hands its leaderships over before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from clusterkit import (
    Layout,
    Workload,
    check_end_state,
    layout,
    leader_counts,
    log,
    stable_leaders,
    statuses,
    wait_acks_on_every_shard,
    wait_converged,
)

from shardset.client import Client, ShardsetError
from shardset.local import LocalCluster

TIMEOUT = 150.0
ELECTION_S = 0.5  # election_tick 10 x 50 ms ticks
HOLD_S = 0.4  # below the election timeout: the lagging follower does not campaign


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def transfer(cluster: LocalCluster, shard: int, leader: int, to: int) -> None:
    url = f"{cluster.node(leader).api}/v1/admin/transfer-leader"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"shard": shard, "to": to}, timeout=aiohttp.ClientTimeout(10)) as r,
    ):
        await r.read()


async def raw_get(
    cluster: LocalCluster, node: int, key: str, **params: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET straight to `node`: no redirect followed, no retry."""
    url = f"{cluster.node(node).api}/v1/kv/{key}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            url, params=params, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=8)
        ) as r,
    ):
        return r.status, await r.json(), dict(r.headers)


def counter(value: bytes | None) -> int:
    return -1 if value is None else int(value.decode().rsplit("-", 1)[1])


async def lag_pulses(cluster: LocalCluster, node: int, stop: asyncio.Event) -> int:
    """Hold every link into `node` for HOLD_S, release, repeat: it keeps falling behind."""
    assert cluster.net is not None
    into = [(src, node) for src in cluster.node_ids if src != node]
    pulses = 0
    while not stop.is_set():
        await asyncio.to_thread(cluster.net.block, into, "hold")
        await asyncio.sleep(HOLD_S)
        await asyncio.to_thread(cluster.net.unblock, into)
        pulses += 1
        await asyncio.sleep(0.15)
    return pulses


async def leader_changes(cluster: LocalCluster, shard: int, stop: asyncio.Event) -> int:
    """Move `shard`'s leadership to another voter every 1.2 s."""
    moves = 0
    while not stop.is_set():
        await asyncio.sleep(1.2)
        try:
            leaders = await stable_leaders(cluster, [shard], timeout=5.0)
        except AssertionError:
            continue
        leader = leaders[shard]
        to = random.choice([n for n in cluster.node_ids if n != leader])
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await transfer(cluster, shard, leader, to)
            moves += 1
    return moves


def key_on(lay: Layout, shard: int, prefix: str) -> str:
    return next(k for k in lay.keys(prefix, per_shard=1) if lay.shard_of(k) == shard)


# ------------------------------------------------------------------------- 1
def test_linearizable_and_lease_reads_under_partitions_and_leader_changes(
    cluster_factory: Any,
) -> None:
    """Gets alternate between linearizable and lease reads while the leader of most shards
    is cut off (new leaders are elected), then healed, then leaderships are transferred;
    the whole history must be linearizable."""
    cluster = cluster_factory(fault_proxies=True)

    async def scenario() -> None:
        lay = await layout(cluster)
        wl = Workload(
            cluster.endpoints,
            lay.keys("lin", per_shard=2),
            clients=4,
            read_modes=("linearizable", "lease"),
        )
        await stable_leaders(cluster, lay.shards)
        wl.start()
        await asyncio.sleep(2.0)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        busiest = max(counts, key=lambda n: (counts[n], -n))
        cluster.isolate(busiest)
        t_cut = time.monotonic()
        await wait_acks_on_every_shard(wl, lay, t_cut, timeout=30.0)
        await asyncio.sleep(2.0)
        cluster.heal()
        log(f"isolated node {busiest} (led {counts[busiest]} shards) for "
            f"{time.monotonic() - t_cut:.1f}s, healed")  # fmt: skip
        await wait_acks_on_every_shard(wl, lay, time.monotonic(), timeout=30.0)
        for _ in range(2):
            leaders = await stable_leaders(cluster, lay.shards)
            for shard, leader in leaders.items():
                to = min(n for n in cluster.node_ids if n != leader)
                await transfer(cluster, shard, leader, to)
            await asyncio.sleep(1.5)
        await wl.stop()
        log(f"reads served per mode {dict(wl.served)}; client errors {dict(wl.errors)}")
        assert wl.served["linearizable"] > 20 and wl.served["lease"] > 20, wl.served
        assert set(wl.served) <= {"linearizable", "lease"}, wl.served
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


# ------------------------------------------------------------------------- 2
def test_session_reads_your_writes_and_never_goes_back(cluster_factory: Any) -> None:
    """A writer session puts an increasing counter and reads it back in session mode from
    a follower that keeps falling behind (and from random replicas) while the shard's
    leadership moves; a reader session reads it from random replicas. Every read of the
    writer sees at least its last write; no session's reads ever go back."""
    cluster = cluster_factory(fault_proxies=True)

    async def scenario() -> None:
        lay = await layout(cluster)
        shard = lay.shards[0]
        key = key_on(lay, shard, "session")
        leaders = await stable_leaders(cluster, lay.shards)
        lagger = next(n for n in cluster.node_ids if n != leaders[shard])
        stop = asyncio.Event()
        chaos = [
            asyncio.create_task(lag_pulses(cluster, lagger, stop)),
            asyncio.create_task(leader_changes(cluster, shard, stop)),
        ]
        served_by: dict[int, int] = {}
        writer = Client(cluster.endpoints, timeout=3.0, attempts=30)
        reader = Client(cluster.endpoints, timeout=3.0, attempts=30)
        try:
            written, writer_seen, reader_seen = -1, -1, -1
            deadline = time.monotonic() + 10.0
            n = 0
            while time.monotonic() < deadline:
                n += 1
                await writer.put(key, f"v-{n}".encode())
                written = n
                for replica in (lagger, None):
                    r = await writer.get(key, consistency="session", replica=replica)
                    assert r.consistency == "session", r
                    served_by[r.replica] = served_by.get(r.replica, 0) + 1
                    got = counter(r.value)
                    assert got >= written, f"session read {got} after writing {written}: {r}"
                    assert got >= writer_seen, f"went back from {writer_seen} to {got}: {r}"
                    writer_seen = got
                r = await reader.get(key, consistency="session")
                got = counter(r.value)
                assert got >= reader_seen, f"reader went back from {reader_seen} to {got}: {r}"
                reader_seen = got
        finally:
            stop.set()
            pulses, moves = await asyncio.gather(*chaos)
            await writer.close()
            await reader.close()
        log(
            f"session: {n} writes, reads served by {served_by}; lagging node {lagger} "
            f"held {pulses} times, {moves} leader transfers"
        )
        assert served_by.get(lagger, 0) > 0, "the lagging follower never served a read"
        assert moves >= 3 and pulses >= 5, (moves, pulses)

    run(scenario())


# ------------------------------------------------------------------------- 3
def test_bounded_staleness_stays_within_the_bound(cluster_factory: Any) -> None:
    """A writer puts an increasing counter (recording when each write was acknowledged);
    bounded reads (200 ms) go to a follower that keeps falling behind by 400 ms. A read
    returning counter c, invoked at t, is stale by t - (acknowledgement of write c + 1);
    that must never exceed the bound, nor may the staleness the replica claims."""
    cluster = cluster_factory(fault_proxies=True)
    bound = 200

    async def scenario() -> None:
        lay = await layout(cluster)
        shard = lay.shards[1]
        key = key_on(lay, shard, "bounded")
        leaders = await stable_leaders(cluster, lay.shards)
        lagger = next(n for n in cluster.node_ids if n != leaders[shard])
        acked: list[tuple[int, float]] = []  # (counter, acknowledged at)
        reads: list[tuple[float, int, int, float | None]] = []  # (invoke, counter, node, claim)
        stop = asyncio.Event()

        async def write() -> None:
            async with Client(cluster.endpoints, timeout=3.0, attempts=30) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    await c.put(key, f"b-{n}".encode())
                    acked.append((n, time.monotonic()))
                    await asyncio.sleep(0.01)

        async def read() -> None:
            async with Client(cluster.endpoints, timeout=3.0, attempts=30) as c:
                while not stop.is_set():
                    invoke = time.monotonic()
                    try:
                        r = await c.get(
                            key, consistency="bounded", max_staleness_ms=bound, replica=lagger
                        )
                    except ShardsetError:
                        continue
                    assert r.consistency == "bounded", r
                    reads.append((invoke, counter(r.value), r.replica, r.staleness_ms))
                    await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(write()), asyncio.create_task(read())]
        pulses = asyncio.create_task(lag_pulses(cluster, lagger, stop))
        await asyncio.sleep(10.0)
        stop.set()
        await asyncio.gather(*tasks, pulses)

        worst = 0.0
        for invoke, got, node, claim in reads:
            assert claim is not None and claim <= bound, (invoke, got, node, claim)
            newer = [t for n, t in acked if n == got + 1]
            if newer and newer[0] < invoke:
                staleness = (invoke - newer[0]) * 1000
                worst = max(worst, staleness)
                assert staleness <= bound, (
                    f"node {node} served counter {got} {staleness:.0f} ms after write "
                    f"{got + 1} was acknowledged (bound {bound} ms)"
                )
        by_node = {n: sum(1 for r in reads if r[2] == n) for n in cluster.node_ids}
        log(
            f"bounded {bound} ms: {len(acked)} writes, {len(reads)} reads served by {by_node}; "
            f"worst measured staleness {worst:.1f} ms"
        )
        assert by_node[lagger] > 20, "the lagging follower served (almost) no bounded reads"
        assert len(reads) > 100, len(reads)

    run(scenario())


# ------------------------------------------------------------------------- 4
def test_eventual_reads_answer_on_the_minority_side(cluster_factory: Any) -> None:
    """Cut off the leader of a key's shard, then write the key through the majority: the
    cut-off node serves the old value to an eventual read (a real stale read) and keeps
    answering eventual reads for every shard, while linearizable, lease, bounded and
    session reads there are refused (503, once it knows no leader) or sent elsewhere."""
    cluster = cluster_factory(fault_proxies=True)

    async def scenario() -> None:
        lay = await layout(cluster)
        leaders = await stable_leaders(cluster, lay.shards)
        shard = lay.shards[0]
        key = key_on(lay, shard, "eventual")
        cut = leaders[shard]
        async with Client(cluster.endpoints, timeout=3.0, attempts=40) as c:
            await c.put(key, b"old")
            await wait_converged(cluster)
            cluster.isolate(cut)
            t_cut = time.monotonic()
            w = await c.put(key, b"new")
        log(f"node {cut} cut off; 'new' acknowledged at index {w.index} after "
            f"{time.monotonic() - t_cut:.2f}s")  # fmt: skip

        status, body, headers = await raw_get(cluster, cut, key, consistency="eventual")
        assert status == 200 and body["value"] == "b2xk", body  # base64("old"): stale
        assert body["replica"] == cut and body["consistency"] == "eventual", body
        assert headers["X-Shardset-Replica"] == str(cut), headers
        assert headers["X-Shardset-Consistency"] == "eventual", headers

        # Once the cut-off node has stepped down, the leader modes refuse with a reason.
        deadline = time.monotonic() + 10 * ELECTION_S
        refusals: dict[str, tuple[int, dict[str, Any]]] = {}
        while time.monotonic() < deadline:
            for mode in ("linearizable", "lease"):
                status, body, _ = await raw_get(cluster, cut, key, consistency=mode)
                refusals[mode] = (status, body)
            if all(s == 503 for s, _ in refusals.values()):
                break
            await asyncio.sleep(0.2)
        for mode, (status, body) in refusals.items():
            assert status == 503, (mode, status, body)
            assert body["error"] == "no_leader" and "cut off" in body["message"], body
            assert f"{mode} reads" in body["message"], body
        status, body, _ = await raw_get(
            cluster, cut, key, consistency="bounded", max_staleness_ms="1000"
        )
        assert status in (307, 503) and body.get("value") is None, (status, body)
        status, body, _ = await raw_get(
            cluster, cut, key, consistency="session", min_index=str(w.index)
        )
        assert status in (307, 503) and body.get("value") is None, (status, body)
        log(f"on the minority: linearizable/lease 503 {refusals['lease'][1]['message']!r}")

        # Eventual reads keep answering there, for every shard, during the partition.
        for s in lay.shards:
            for _ in range(5):
                status, body, _ = await raw_get(
                    cluster, cut, key_on(lay, s, "eventual"), consistency="eventual"
                )
                assert status in (200, 404) and body["replica"] == cut, (s, status, body)
        cluster.heal()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            status, body, _ = await raw_get(cluster, cut, key, consistency="eventual")
            if body.get("value") == "bmV3":  # base64("new")
                break
            await asyncio.sleep(0.2)
        assert body.get("value") == "bmV3", f"node {cut} never caught up: {body}"

    run(scenario())


# ------------------------------------------------------------------------- 5
async def _shardset(cluster: LocalCluster, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shardset", "--endpoints", ",".join(cluster.endpoints), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60.0)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _post(url: str, body: object) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
        return r.status, await r.json()


def test_default_mode_flag_admin_api_and_cli(cluster_factory: Any) -> None:
    """Nodes started with --consistency eventual serve mode-less reads as eventual; the
    admin API changes that live (and refuses bad input naming the field); the CLI's
    --consistency overrides it per request, for every mode."""
    cluster = cluster_factory(node_args=["--consistency", "eventual"])

    async def scenario() -> None:
        lay = await layout(cluster)
        await stable_leaders(cluster, lay.shards)
        key = "cli-consistency"
        rc, _, err = await _shardset(cluster, "put", key, "v1")
        assert rc == 0, err
        seen = await statuses(cluster)
        for node, st in seen.items():
            assert st is not None and st["consistency"] == {
                "mode": "eventual",
                "maxStalenessMs": None,
            }, (node, st)
        node = cluster.node_ids[0]
        status, body, _ = await raw_get(cluster, node, key)
        assert status == 200 and body["consistency"] == "eventual" and body["replica"] == node

        admin = f"{cluster.node(node).api}/v1/admin/consistency"
        for bad, field in (
            ({"mode": "strict"}, "mode"),
            ({"mode": "bounded"}, "maxStalenessMs"),
            ({"mode": "bounded", "maxStalenessMs": -1}, "maxStalenessMs"),
            ({"mode": "bounded", "maxStalenessMs": "5"}, "maxStalenessMs"),
        ):
            status, answer = await _post(admin, bad)
            assert status == 400 and answer["field"] == field, (bad, status, answer)
            assert field in answer["message"], answer
        status, answer = await _post(admin, {"mode": "bounded", "maxStalenessMs": 750})
        assert (status, answer) == (200, {"mode": "bounded", "maxStalenessMs": 750})
        st = (await statuses(cluster, [node]))[node]
        assert st is not None and st["consistency"] == answer, st
        status, body, _ = await raw_get(cluster, node, key)
        assert status in (200, 307), body
        if status == 200:
            assert body["consistency"] == "bounded" and body["staleness_ms"] <= 750, body

        for mode in ("linearizable", "lease", "bounded", "session", "eventual"):
            args = ["get", key, "--consistency", mode, "-v"]
            if mode == "bounded":
                args += ["--max-staleness-ms", "500"]
            rc, out, err = await _shardset(cluster, *args)
            assert (rc, out) == (0, "v1\n"), (mode, rc, out, err)
            assert f"consistency={mode} replica=" in err, (mode, err)
        rc, out, err = await _shardset(cluster, "get", key, "--consistency", "fast")
        assert rc == 2 and "invalid choice" in err, err
        log("CLI served every mode; admin API changed the default live")

    run(scenario())


# ------------------------------------------------------------------------- 6
def test_sigterm_hands_leadership_over_before_exit(cluster_factory: Any) -> None:
    """SIGTERM to the node leading most shards: it transfers each leadership to an
    up-to-date voter and exits leading nothing (its log says so); the others have new
    leaders at once, without waiting out an election timeout."""
    cluster = cluster_factory()

    async def scenario() -> None:
        lay = await layout(cluster)
        wl = Workload(cluster.endpoints, lay.keys("drain", per_shard=2), clients=3)
        leaders = await stable_leaders(cluster, lay.shards)
        wl.start()
        await asyncio.sleep(1.5)
        leaders = await stable_leaders(cluster, lay.shards)
        counts = leader_counts(leaders, cluster.node_ids)
        victim = max(counts, key=lambda n: (counts[n], -n))
        # The metadata group too: whichever groups it leads.
        st = (await statuses(cluster, [victim]))[victim]
        assert st is not None
        led = sorted(g for g, v in st["groups"].items() if v["role"] == "leader")
        terms = {g: v["term"] for g, v in st["groups"].items()}
        offset = cluster.log_path(victim).stat().st_size
        t_term = time.monotonic()
        await asyncio.to_thread(cluster.stop_node, victim)
        exited = time.monotonic() - t_term
        events = _events(cluster.log_path(victim).read_text()[offset:])
        drained = [e for e in events if e.get("event") == "drain complete"]
        assert drained and drained[-1]["still_leads"] == [], events[-10:]
        moved = {str(e["group"]) for e in events if e.get("event") == "transferring leadership"}
        assert {"0" if g == "meta" else g for g in led} <= moved, (led, moved)
        new = await stable_leaders(cluster, lay.shards, timeout=5.0)
        assert victim not in new.values(), new
        others = await statuses(cluster, [n for n in cluster.node_ids if n != victim])
        for node, view in others.items():
            assert view is not None
            for g in led:
                # A transfer is one election in the next term: no failed rounds before it.
                assert view["groups"][g]["term"] == terms[g] + 1, (node, g, view["groups"][g])
        await wl.stop()
        log(
            f"SIGTERM to node {victim} (led {led}): exited after {exited:.2f}s, drained in "
            f"{drained[-1]['seconds']}s; new leaders {new}; client errors {dict(wl.errors)}"
        )
        cluster.start_node(victim)
        await asyncio.to_thread(cluster.wait_ready, 60.0)
        await check_end_state(cluster, wl.keys, wl.history)

    run(scenario())


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out
