"""Corrupt engine data and diverged replicas, with real node processes (issue 15).

A node is stopped and its kv.sqlite3 changed behind its back in two ways: bytes of a
value flipped in the file (the row's checksum no longer matches), and a value rewritten
with a matching checksum (a replica that diverged, as a forged append could make it:
only comparing replicas finds that). After the restart no read ever returns a changed
value, whether eventual against that node or linearizable after a leadership move to
it; the consistency checker names the shard and the replica; the replica is rebuilt
from its peers and then agrees.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from clusterkit import layout, log, stable_leaders, statuses, wait_converged

from shardset.client import Client
from shardset.local import LocalCluster
from shardset_node.storage.kvengine import row_crc

Answer = tuple[int, dict[str, Any]]


def _good(key: str) -> str:
    return f"good-{key}-0123456789"


def _flip_value_bytes(db_file: Path, key: str) -> None:
    """good-<key> -> evil-<key> wherever the value's bytes lie in the (stopped) file."""
    old, new = _good(key).encode(), _good(key).replace("good", "evil").encode()
    raw = db_file.read_bytes()
    assert raw.count(old) >= 1, f"{key}'s value is not in {db_file}"
    db_file.write_bytes(raw.replace(old, new))


def _diverge(db_file: Path, shard: int, key: str) -> None:
    """Rewrite a value together with a matching checksum: the row is intact, the replica
    is not (only a comparison with its peers can tell)."""
    value = _good(key).replace("good", "diff").encode()
    db = sqlite3.connect(db_file, isolation_level=None)
    try:
        cur = db.execute(
            "UPDATE kv SET value = ?, crc = ? WHERE shard = ? AND key = ?",
            (value, row_crc(shard, key.encode(), value), shard, key.encode()),
        )
        assert cur.rowcount == 1
    finally:
        db.close()


async def _get(session: aiohttp.ClientSession, api: str, key: str, consistency: str) -> Answer:
    url = f"{api}/v1/kv/{key}?consistency={consistency}"
    async with session.get(url, allow_redirects=False) as r:
        return r.status, await r.json(content_type=None)


async def _admin(
    session: aiohttp.ClientSession, api: str, action: str, body: dict[str, Any]
) -> Answer:
    async with session.post(f"{api}/v1/admin/{action}", json=body) as r:
        return r.status, await r.json(content_type=None)


def _served_value(answer: Answer, key: str) -> str | None:
    """The value a 200 served (checked never to be a changed one), None otherwise."""
    status, body = answer
    if status != 200:
        assert status in (307, 503), (status, body)
        if status == 503:
            assert body["error"] in ("replica_corrupt", "no_leader", "retry"), body
        return None
    value = base64.b64decode(body["value"]).decode()
    assert value == _good(key), f"served a changed value for {key}: {value!r} ({body})"
    return value


async def _until_served(
    session: aiohttp.ClientSession, api: str, key: str, consistency: str, timeout: float = 30.0
) -> list[Answer]:
    """Read until `api` serves the key (every answer checked); all answers seen."""
    seen: list[Answer] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = await _get(session, api, key, consistency)
        seen.append(answer)
        if _served_value(answer, key) is not None:
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"{api} never served {key} within {timeout}s: {seen[-3:]}")


async def _until_served_good(
    session: aiohttp.ClientSession, api: str, key: str, consistency: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await _get(session, api, key, consistency)
        if status == 200 and base64.b64decode(body["value"]).decode() == _good(key):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{api} still serves a diverged {key} after {timeout}s")


def _pick(lay: Any, leaders: dict[int, int]) -> tuple[int, int, int, int]:
    """A victim node and three shards it follows (it leads none of them)."""
    for victim in sorted({n for hs in lay.replicas.values() for n in hs}):
        followed = [s for s in lay.shards if victim in lay.replicas[s] and leaders[s] != victim]
        if len(followed) >= 3:
            return victim, followed[0], followed[1], followed[2]
    # Fewer followed shards: shards may share a role (tests stay meaningful).
    victim = min(leaders.values())
    s = [x for x in lay.shards if leaders[x] != victim] or lay.shards
    return victim, s[0], s[-1], s[len(s) // 2]


@dataclass
class _Plan:
    victim: int
    shards: tuple[int, int, int]  # flipped, diverged, linearizable
    keys: tuple[str, str, str]


async def _prepare(cluster: LocalCluster) -> _Plan:
    """Write good values on every shard, then stop a node, change its file, restart it."""
    lay = await layout(cluster)
    keys = {s: [k for k in lay.keys("ck", 3) if lay.shard_of(k) == s] for s in lay.shards}
    client = Client(cluster.endpoints)
    try:
        for shard_keys in keys.values():
            for k in shard_keys:
                await client.put(k, _good(k).encode())
    finally:
        await client.close()
    await wait_converged(cluster)
    leaders = await stable_leaders(cluster, lay.shards)
    victim, s_flip, s_div, s_lin = _pick(lay, leaders)
    plan = _Plan(victim, (s_flip, s_div, s_lin), (keys[s_flip][0], keys[s_div][1], keys[s_lin][2]))
    log(f"{plan}; leaders {leaders}")
    cluster.stop_node(victim)
    db_file = cluster.node_dir(victim) / "kv.sqlite3"
    wal = Path(f"{db_file}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "a clean stop checkpoints the WAL"
    _flip_value_bytes(db_file, plan.keys[0])
    _flip_value_bytes(db_file, plan.keys[2])
    _diverge(db_file, s_div, plan.keys[1])
    cluster.start_node(victim)
    await wait_converged(cluster)
    return plan


async def _eventual_reads(session: aiohttp.ClientSession, cluster: LocalCluster, p: _Plan) -> None:
    """Refused (never the flipped bytes) until rebuilt from the leader, then the good value."""
    seen = await _until_served(session, cluster.node(p.victim).api, p.keys[0], "eventual")
    assert seen[0][0] == 503 and seen[0][1]["error"] == "replica_corrupt", seen[0]
    log(f"eventual reads of {p.keys[0]} on {p.victim}: {[a[0] for a in seen]}")


async def _linearizable_reads(
    session: aiohttp.ClientSession, cluster: LocalCluster, p: _Plan
) -> None:
    """After a leadership move to the victim: refused there; the shard keeps serving."""
    shard, key, api = p.shards[2], p.keys[2], cluster.node(p.victim).api
    leader = (await stable_leaders(cluster, [shard]))[shard]
    moved = await _admin(
        session, cluster.node(leader).api, "transfer-leader", {"shard": shard, "to": p.victim}
    )
    assert moved[0] == 200, moved
    await _until_led(cluster, shard, p.victim)
    first = await _get(session, api, key, "linearizable")
    assert first[0] == 503 and first[1]["error"] == "replica_corrupt", first
    client = Client(cluster.endpoints)
    try:
        for _ in range(10):  # the cluster keeps answering with the good value
            got = await client.get(key, consistency="linearizable")
            assert got.value == _good(key).encode(), got
    finally:
        await client.close()
    seen = [first, *await _until_served(session, api, key, "eventual")]
    log(f"linearizable, then eventual reads of {key} on {p.victim}: {[a[0] for a in seen]}")


async def _checker_finds_divergence(
    session: aiohttp.ClientSession, cluster: LocalCluster, p: _Plan
) -> None:
    """The diverged row passes its checksum: the checker names the shard and replica."""
    shard = p.shards[1]
    leader = (await stable_leaders(cluster, [shard]))[shard]
    api = cluster.node(leader).api
    st, report = await _admin(session, api, "check-consistency", {"shard": shard})
    assert st == 200, report
    log(f"check of shard {shard}: {report}")
    assert report["ok"] is False and report["decided"] is True, report
    assert report["shard"] == shard and report["mismatched"] == [p.victim], report
    status = (await statuses(cluster, [leader]))[leader]
    assert status is not None
    assert status["groups"][str(shard)]["consistency_check"]["mismatched"] == [p.victim]
    async with session.get(f"{api}/metrics") as r:
        metrics = await r.text()
    line = f'shardset_consistency_mismatch{{replica="{p.victim}",shard="{shard}"}} 1.0'
    assert line in metrics, [m for m in metrics.splitlines() if "mismatch" in m]


def test_corrupt_and_diverged_replicas_are_never_served_and_are_rebuilt(
    cluster_factory: Any,
) -> None:
    cluster: LocalCluster = cluster_factory(node_args=("--check-interval-s", "0"))

    async def scenario() -> None:
        plan = await _prepare(cluster)
        async with aiohttp.ClientSession() as session:
            await _eventual_reads(session, cluster, plan)
            await _linearizable_reads(session, cluster, plan)
            await _checker_finds_divergence(session, cluster, plan)
            # Rebuilt from the leader, the replica agrees again.
            await _until_agrees(session, cluster, plan.shards[1], plan.keys[1], plan.victim)

    asyncio.run(scenario())


async def _until_led(cluster: LocalCluster, shard: int, node: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (await statuses(cluster, [node]))[node]
        if st is not None and st["groups"][str(shard)]["role"] == "leader":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"node {node} did not take the leadership of shard {shard}")


async def _until_agrees(
    session: aiohttp.ClientSession, cluster: LocalCluster, shard: int, key: str, victim: int
) -> None:
    deadline = time.monotonic() + 30.0
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        st, body = await _get(session, cluster.node(victim).api, key, "eventual")
        if st != 200 or _served_value((st, body), key) is None:
            continue
        leader = (await stable_leaders(cluster, [shard]))[shard]
        code, report = await _admin(
            session, cluster.node(leader).api, "check-consistency", {"shard": shard}
        )
        if code == 200 and report["ok"]:
            assert len(report["digests"]) == 3 and None not in report["digests"].values()
            return
    raise AssertionError(f"shard {shard} did not agree again: {report}")


def test_periodic_checks_find_and_rebuild_a_diverged_replica(cluster_factory: Any) -> None:
    """With a short interval and no admin call at all: a leader checks its shards on its
    own, and the outvoted replica is rebuilt."""
    cluster: LocalCluster = cluster_factory(node_args=("--check-interval-s", "1"))

    async def scenario() -> None:
        lay = await layout(cluster)
        key = lay.keys("pk", 1)[0]
        shard = lay.shard_of(key)
        client = Client(cluster.endpoints)
        try:
            await client.put(key, _good(key).encode())
        finally:
            await client.close()
        await wait_converged(cluster)
        leader = (await stable_leaders(cluster, [shard]))[shard]
        victim = next(n for n in lay.replicas[shard] if n != leader)
        cluster.stop_node(victim)
        _diverge(cluster.node_dir(victim) / "kv.sqlite3", shard, key)
        cluster.start_node(victim)
        await wait_converged(cluster)
        async with aiohttp.ClientSession() as session:
            # Until the check, the diverged value passes its checksum and is served (only
            # a comparison can find it); rebuilt, the replica serves the good value again.
            await _until_served_good(session, cluster.node(victim).api, key, "eventual", 60.0)
        found = []
        for _ in range(40):  # the leader's report of the check that found it, or a later one
            leader = (await stable_leaders(cluster, [shard]))[shard]
            st = (await statuses(cluster, [leader]))[leader]
            check = st["groups"][str(shard)].get("consistency_check") if st else None
            if check is not None:
                found.append(check)
                if check["ok"]:
                    break
            await asyncio.sleep(0.5)
        log(f"periodic checks of shard {shard} seen: {found}")
        assert found and found[-1]["ok"], found

    asyncio.run(scenario())
