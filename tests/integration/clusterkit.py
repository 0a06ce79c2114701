"""Helpers for integration tests on a real local cluster (node processes on 127.0.0.1).

* :class:`Workload`: several asyncio clients doing put/get/cas on a handful of keys with
  unique values, recording an :class:`~shardset_sim.linearizability.Op` history with
  ``time.monotonic()`` invoke/complete times. A write that errors or times out is recorded
  as indeterminate (``complete=None``); a read that does is dropped.
* :func:`wait_converged`, :func:`replica_contents`: every replica reports the same applied
  index per group, and holds the same rows in its SQLite state (read-only).
* :func:`final_reads`, :func:`lost_writes`, :func:`assert_history_ok`: the end-of-scenario
  checks (no acknowledged write lost, the history is linearizable).

Everything waits with a timeout and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from shardset.client import Client, ShardsetError
from shardset.local import LocalCluster
from shardset_node.storage.raftstore import RecordKind
from shardset_node.storage.wal import MAGIC, WalRecord, WriteAheadLog
from shardset_proto.slots import slot_of
from shardset_sim.linearizability import Op, check_kv

WRITES = ("put", "cas", "delete")


def log(msg: str) -> None:
    print(f"[integration] {msg}", flush=True)


# --------------------------------------------------------------------------- cluster views
@dataclass
class Layout:
    """The shard map as the tests need it: which shard a key lives on."""

    slots: list[tuple[int, int, int]]
    replicas: dict[int, list[int]]

    @property
    def shards(self) -> list[int]:
        return sorted(self.replicas)

    def shard_of(self, key: str) -> int:
        slot = slot_of(key.encode())
        for start, end, shard in self.slots:
            if start <= slot < end:
                return shard
        raise AssertionError(f"no shard owns slot {slot}")

    def keys(self, prefix: str, per_shard: int) -> list[str]:
        """`per_shard` keys on every shard, named `prefix-N`."""
        chosen: dict[int, list[str]] = {s: [] for s in self.shards}
        for i in range(10_000):
            key = f"{prefix}-{i}"
            bucket = chosen[self.shard_of(key)]
            if len(bucket) < per_shard:
                bucket.append(key)
            if all(len(b) == per_shard for b in chosen.values()):
                return sorted(k for b in chosen.values() for k in b)
        raise AssertionError("could not spread keys over every shard")


async def get_json(
    session: aiohttp.ClientSession, url: str, timeout: float = 2.0
) -> dict[str, Any] | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            body = await resp.json()
            return body if isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def layout(cluster: LocalCluster, timeout: float = 10.0) -> Layout:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            for url in cluster.endpoints:
                raw = await get_json(session, f"{url}/v1/shardmap")
                if raw is not None:
                    return Layout(
                        [(int(a), int(b), int(s)) for a, b, s in raw["slots"]],
                        {int(s): [int(n) for n in h] for s, h in raw["replicas"].items()},
                    )
            await asyncio.sleep(0.2)
    raise AssertionError(f"no node served /v1/shardmap within {timeout}s")


async def statuses(
    cluster: LocalCluster, nodes: Iterable[int] | None = None
) -> dict[int, dict[str, Any] | None]:
    """Each node's /v1/status (None if it did not answer)."""
    ids = list(cluster.node_ids if nodes is None else nodes)
    async with aiohttp.ClientSession() as session:
        found = await asyncio.gather(
            *(get_json(session, f"{cluster.node(n).api}/v1/status") for n in ids)
        )
    return dict(zip(ids, found, strict=True))


def _shard_groups(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(g): v for g, v in status["groups"].items() if g != "meta"}


async def shard_leaders(
    cluster: LocalCluster, nodes: Iterable[int] | None = None
) -> dict[int, int]:
    """shard -> the node that says it leads it (the highest term wins), among `nodes`."""
    best: dict[int, tuple[int, int]] = {}
    for node, st in (await statuses(cluster, nodes)).items():
        if st is None:
            continue
        for shard, g in _shard_groups(st).items():
            if g["role"] == "leader" and g["term"] >= best.get(shard, (-1, 0))[0]:
                best[shard] = (g["term"], node)
    return {s: n for s, (_, n) in best.items()}


async def stable_leaders(
    cluster: LocalCluster, shards: Sequence[int], timeout: float = 20.0
) -> dict[int, int]:
    """Wait until every shard has a leader that every running node agrees on, and that
    is running and acting as the leader."""
    deadline = time.monotonic() + timeout
    seen: dict[int, dict[str, Any] | None] = {}
    while time.monotonic() < deadline:
        running = [n for n in cluster.node_ids if cluster.running(n)]
        seen = await statuses(cluster, running)
        views = {n: _shard_groups(st) for n, st in seen.items() if st is not None}
        if len(views) == len(running):
            agreed = {}
            for shard in shards:
                named = {v[shard]["leader"] for v in views.values() if shard in v}
                leader = named.pop() if len(named) == 1 else 0
                if views.get(leader, {}).get(shard, {}).get("role") == "leader":
                    agreed[shard] = leader
            if len(agreed) == len(shards):
                return agreed
        await asyncio.sleep(0.2)
    raise AssertionError(f"no stable leader for every shard within {timeout}s: {seen}")


def leader_counts(leaders: dict[int, int], nodes: Iterable[int]) -> dict[int, int]:
    counts = {n: 0 for n in nodes}
    for node in leaders.values():
        counts[node] = counts.get(node, 0) + 1
    return counts


# --------------------------------------------------------------------------- the workload
@dataclass
class Workload:
    """Concurrent clients on `keys`; see the module docstring."""

    endpoints: list[str]
    keys: list[str]
    clients: int = 4
    op_timeout: float = 5.0
    think: float = 0.01  # pause between a client's operations (keeps histories checkable)
    max_ops_per_client: int = 3000
    max_seconds: float = 120.0
    seed: int = 1
    read_modes: tuple[str, ...] = ()  # each get picks one (linearizable ones only!)
    protocol: str = "http"  # the clients' protocol: "http" or "wire"
    history: list[Op] = field(default_factory=list)
    served: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._stop.clear()
        for cid in range(self.clients):
            self._tasks.append(asyncio.create_task(self._client(cid), name=f"workload-{cid}"))

    async def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout or self.op_timeout + 5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _new_client(self, rng: random.Random) -> Client:
        endpoints = list(self.endpoints)
        rng.shuffle(endpoints)
        return Client(endpoints, timeout=2.0, attempts=12, protocol=self.protocol)

    async def _client(self, cid: int) -> None:
        rng = random.Random(self.seed * 1000 + cid)
        client = self._new_client(rng)
        seen: dict[str, str | None] = {}
        deadline = time.monotonic() + self.max_seconds
        try:
            for n in range(self.max_ops_per_client):
                if self._stop.is_set() or time.monotonic() > deadline:
                    break
                key = rng.choice(self.keys)
                roll = rng.random()
                kind = "put" if roll < 0.4 else "get" if roll < 0.75 else "cas"
                value = f"c{cid}-{n}-{uuid.uuid4().hex[:6]}"
                expected = seen.get(key)
                ok = await self._one(client, cid, kind, key, value, expected, seen)
                if not ok:  # start afresh: forget cached leaders, other endpoint order
                    await client.close()
                    client = self._new_client(rng)
                    await asyncio.sleep(0.05)
                if self.think:
                    await asyncio.sleep(self.think * rng.uniform(0.5, 1.5))
        finally:
            await client.close()

    async def _one(
        self,
        client: Client,
        cid: int,
        kind: str,
        key: str,
        value: str,
        expected: str | None,
        seen: dict[str, str | None],
    ) -> bool:
        invoke = time.monotonic()
        try:
            if kind == "put":
                await asyncio.wait_for(client.put(key, value.encode()), self.op_timeout)
                op = Op(cid, "put", key, value, invoke=invoke, complete=time.monotonic())
                seen[key] = value
            elif kind == "get":
                mode = random.choice(self.read_modes) if self.read_modes else None
                r = await asyncio.wait_for(client.get(key, consistency=mode), self.op_timeout)
                self.served[r.consistency] += 1
                got = None if r.value is None else r.value.decode()
                op = Op(cid, "get", key, invoke=invoke, complete=time.monotonic(), result=got)
                seen[key] = got
            else:
                exp = None if expected is None else expected.encode()
                w = await asyncio.wait_for(client.cas(key, exp, value.encode()), self.op_timeout)
                done = bool(w.extra["ok"])
                op = Op(
                    cid,
                    "cas",
                    key,
                    value,
                    expected,
                    invoke=invoke,
                    complete=time.monotonic(),
                    result=done,
                )
                if done:
                    seen[key] = value
        except (ShardsetError, TimeoutError, aiohttp.ClientError, OSError) as e:
            self.errors[f"{kind}: {_error_kind(e)}"] += 1
            if kind != "get":  # a write that may or may not have happened
                self.history.append(
                    Op(cid, kind, key, value, expected if kind == "cas" else None, invoke=invoke)
                )
            return False
        self.history.append(op)
        return True

    # --- views of the history ---------------------------------------------------------
    def acked_writes(self) -> list[Op]:
        return acked_writes(self.history)


def _error_kind(e: BaseException) -> str:
    if isinstance(e, ShardsetError):
        return f"HTTP {e.status}" if e.status else "transport"
    return e.__class__.__name__


def acked_writes(history: Iterable[Op]) -> list[Op]:
    """Writes the client saw succeed (put/delete acknowledged, cas acknowledged with ok)."""
    return sorted(
        (
            op
            for op in history
            if op.kind in WRITES
            and op.complete is not None
            and (op.kind != "cas" or op.result is True)
        ),
        key=lambda op: op.complete or 0.0,
    )


def ack_gap(history: Iterable[Op], since: float, until: float) -> tuple[float, float, float]:
    """The longest stretch without an acknowledged write that overlaps [since, until]:
    (gap seconds, its start, its end)."""
    times = [op.complete for op in acked_writes(history) if op.complete is not None]
    before = [t for t in times if t <= since]
    points = [before[-1] if before else since] + [t for t in times if since < t <= until]
    points.append(until)
    best = (0.0, since, since)
    for a, b in itertools.pairwise(points):
        if b - a > best[0]:
            best = (b - a, a, b)
    return best


def first_ack_after(history: Iterable[Op], lay: Layout, t: float) -> dict[int, float]:
    """shard -> seconds from `t` to the first acknowledged write invoked at or after `t`."""
    out: dict[int, float] = {}
    for op in acked_writes(history):
        if op.invoke >= t and op.complete is not None:
            shard = lay.shard_of(op.key)
            out[shard] = min(out.get(shard, float("inf")), op.complete - t)
    return out


async def wait_acks_on_every_shard(
    wl: Workload, lay: Layout, since: float, timeout: float
) -> dict[int, float]:
    """Wait (bounded) until every shard has acknowledged a write invoked after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = first_ack_after(wl.history, lay, since)
        if set(got) >= set(lay.shards):
            return got
        await asyncio.sleep(0.1)
    got = first_ack_after(wl.history, lay, since)
    raise AssertionError(
        f"shards {sorted(set(lay.shards) - set(got))} acknowledged no write within "
        f"{timeout}s after the fault (acked: {got}; client errors: {dict(wl.errors)})"
    )


# --------------------------------------------------------------------------- convergence
async def wait_converged(cluster: LocalCluster, timeout: float = 40.0) -> dict[str, int]:
    """Wait until every node reports, for every group, the same applied index (equal to
    its commit index) and the same leader. Returns group -> applied index."""
    deadline = time.monotonic() + timeout
    problems: list[str] = ["not polled yet"]
    while time.monotonic() < deadline:
        seen = await statuses(cluster)
        problems = _convergence_problems(seen)
        if not problems:
            some = next(st for st in seen.values() if st is not None)
            return {g: v["applied"] for g, v in some["groups"].items()}
        await asyncio.sleep(0.25)
    raise AssertionError(f"replicas did not converge within {timeout}s: {problems}")


def _convergence_problems(seen: dict[int, dict[str, Any] | None]) -> list[str]:
    down = [n for n, st in seen.items() if st is None]
    if down:
        return [f"nodes {down} did not answer /v1/status"]
    views = {n: st["groups"] for n, st in seen.items() if st is not None}
    groups = set().union(*(set(v) for v in views.values()))
    problems = []
    for g in sorted(groups):
        per = {n: v.get(g) for n, v in views.items()}
        missing = [n for n, x in per.items() if x is None]
        if missing:
            problems.append(f"group {g} missing on {missing}")
            continue
        applied = {n: x["applied"] for n, x in per.items() if x is not None}
        commit = {n: x["commit"] for n, x in per.items() if x is not None}
        leader = {n: x["leader"] for n, x in per.items() if x is not None}
        roles = [n for n, x in per.items() if x is not None and x["role"] == "leader"]
        if len(set(applied.values())) != 1 or applied != commit:
            problems.append(f"group {g}: applied {applied}, commit {commit}")
        if len(set(leader.values())) != 1 or 0 in leader.values() or len(roles) != 1:
            problems.append(f"group {g}: leaders named {leader}, acting {roles}")
    return problems


def replica_contents(cluster: LocalCluster) -> dict[int, dict[int, tuple[int, dict[str, str]]]]:
    """node -> shard -> (applied index, {key: value}) read from the node's SQLite file."""
    out: dict[int, dict[int, tuple[int, dict[str, str]]]] = {}
    for node in cluster.node_ids:
        path = cluster.node_dir(node) / "kv.sqlite3"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
        try:
            applied = dict(db.execute("SELECT shard, applied FROM shard_meta").fetchall())
            rows: dict[int, dict[str, str]] = collections.defaultdict(dict)
            for shard, key, value in db.execute("SELECT shard, key, value FROM kv"):
                rows[int(shard)][bytes(key).decode()] = bytes(value).decode(errors="replace")
        finally:
            db.close()
        out[node] = {int(s): (int(a), dict(rows.get(int(s), {}))) for s, a in applied.items()}
    return out


def assert_replicas_identical(cluster: LocalCluster) -> dict[int, dict[str, str]]:
    """Every replica of every shard holds the same rows at the same applied index;
    returns shard -> rows."""
    contents = replica_contents(cluster)
    reference: dict[int, tuple[int, dict[str, str]]] = {}
    for node, shards in sorted(contents.items()):
        for shard, state in shards.items():
            if shard not in reference:
                reference[shard] = state
                continue
            ref_applied, ref_rows = reference[shard]
            applied, rows = state
            assert applied == ref_applied, (
                f"shard {shard}: node {node} applied {applied}, another replica {ref_applied}"
            )
            if rows != ref_rows:
                diff = sorted(set(rows.items()) ^ set(ref_rows.items()))[:10]
                raise AssertionError(f"shard {shard}: node {node}'s rows differ: {diff}")
    return {s: rows for s, (_, rows) in reference.items()}


async def final_reads(
    endpoints: Sequence[str], keys: Sequence[str], history: list[Op], client_id: int = 999
) -> dict[str, str | None]:
    """Read every key (linearizably, from its leader) through two clients that start from
    different endpoints; both must agree. The reads are added to `history`."""
    answers: list[dict[str, str | None]] = []
    for offset in range(2):
        eps = list(endpoints[offset:]) + list(endpoints[:offset])
        got: dict[str, str | None] = {}
        async with Client(eps, timeout=5.0, attempts=20) as client:
            for key in keys:
                invoke = time.monotonic()
                r = await asyncio.wait_for(client.get(key), 30.0)
                value = None if r.value is None else r.value.decode()
                history.append(
                    Op(
                        client_id + offset,
                        "get",
                        key,
                        invoke=invoke,
                        complete=time.monotonic(),
                        result=value,
                    )
                )
                got[key] = value
        answers.append(got)
    assert answers[0] == answers[1], f"two final reads disagree: {answers}"
    return answers[0]


def lost_writes(history: Sequence[Op], final: dict[str, str | None]) -> list[str]:
    """Acknowledged writes the final state contradicts (values are unique per write).

    The final value of a key (None: absent) must come from a write (a delete, for None)
    that was not followed, in real time, by an acknowledged write: one invoked after it
    completed. Absent is also fine if no write was ever acknowledged."""
    problems = []
    for key, value in final.items():
        writes = [op for op in history if op.key == key and op.kind in WRITES]
        acked = acked_writes(writes)
        if value is None and not acked:
            continue
        sources = [
            op
            for op in writes
            if (None if op.kind == "delete" else op.value) == value
            and (op.kind != "cas" or op.complete is None or op.result is True)
        ]
        if not sources:
            what = "absent" if value is None else f"{value!r}"
            problems.append(f"{key}: final value {what}, which no write could leave")
            continue
        overwritten = {
            id(w): [op for op in acked if w.complete is not None and op.invoke > w.complete]
            for w in sources
        }
        if all(overwritten.values()):
            w = sources[-1]
            later = overwritten[id(w)]
            problems.append(
                f"{key}: final value {value!r} (written by client {w.client}) although "
                f"{len(later)} acknowledged writes came after it, e.g. {later[-1]}"
            )
    return problems


def assert_history_ok(history: Sequence[Op], final: dict[str, str | None]) -> None:
    lost = lost_writes(history, final)
    assert not lost, "acknowledged writes lost:\n" + "\n".join(lost)
    started = time.monotonic()
    result = check_kv(history)
    indeterminate = sum(1 for op in history if op.complete is None)
    log(
        f"history: {len(history)} ops ({len(acked_writes(history))} acknowledged writes, "
        f"{indeterminate} indeterminate), checked in {time.monotonic() - started:.2f}s"
    )
    assert result.ok, result.explanation
    assert not result.unknown, f"linearizability check inconclusive: {result.explanation}"


async def check_end_state(
    cluster: LocalCluster, keys: Sequence[str], history: list[Op], *, timeout: float = 40.0
) -> dict[str, str | None]:
    """After quiescence (no workload, no fault, every node up): replicas converge, the two
    final reads agree with every replica's rows, nothing acknowledged is lost, and the
    history is linearizable."""
    started = time.monotonic()
    applied = await wait_converged(cluster, timeout)
    log(f"converged in {time.monotonic() - started:.2f}s; applied per group {applied}")
    final = await final_reads(cluster.endpoints, keys, history)
    rows = await asyncio.to_thread(assert_replicas_identical, cluster)
    merged = {k: v for shard_rows in rows.values() for k, v in shard_rows.items()}
    for key in keys:
        assert merged.get(key) == final[key], (
            f"{key}: the leader read {final[key]!r}, the replicas hold {merged.get(key)!r}"
        )
    assert_history_ok(history, final)
    return final


async def wait_caught_up(
    cluster: LocalCluster, node: int, shards: Sequence[int], timeout: float = 60.0
) -> float:
    """Seconds until `node`'s applied index reaches, for every shard, the leader's applied
    index as it was when this was called."""
    started = time.monotonic()
    leaders = await stable_leaders(cluster, shards, timeout)
    target: dict[int, int] = {}
    seen = await statuses(cluster, set(leaders.values()))
    for shard, leader in leaders.items():
        st = seen.get(leader)
        assert st is not None, f"leader {leader} of shard {shard} did not answer"
        target[shard] = _shard_groups(st)[shard]["applied"]
    deadline = started + timeout
    mine: dict[int, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        st = (await statuses(cluster, [node]))[node]
        if st is not None:
            mine = _shard_groups(st)
            if all(s in mine and mine[s]["applied"] >= target[s] for s in shards):
                return time.monotonic() - started
        await asyncio.sleep(0.1)
    have = {s: v["applied"] for s, v in mine.items()}
    raise AssertionError(f"node {node} did not catch up within {timeout}s: {have} < {target}")


# --------------------------------------------------------------------------- storage
def wal_records(wal_dir: Path) -> list[WalRecord]:
    """The records of a node's WAL, read from a copy (opening the log may cut a torn
    tail, which must not happen to a live node's files)."""
    with tempfile.TemporaryDirectory(prefix="walcopy-") as tmp:
        copy = Path(tmp) / "wal"
        shutil.copytree(wal_dir, copy)
        return WriteAheadLog(copy, fsync=False).open()


def installed_snapshots(wal_dir: Path) -> list[tuple[int, int, int]]:
    """(group, term, index) of every snapshot the node installed from a leader."""
    return [
        (r.group, int(r.body[1]), int(r.body[0]))
        for r in wal_records(wal_dir)
        if r.kind == RecordKind.SNAPSHOT
    ]


def snap_files(snap_dir: Path) -> set[str]:
    try:
        return {p.name for p in snap_dir.iterdir() if p.name.endswith(".snap")}
    except FileNotFoundError:
        return set()


def snap_index(name: str) -> tuple[int, int, int]:
    """(group, term, index) from `snap-<group>-<term>-<index>.snap`."""
    group, term, index = name.removeprefix("snap-").removesuffix(".snap").split("-")
    return int(group), int(term), int(index)


@dataclass(frozen=True)
class RecordSpan:
    offset: int
    end: int
    group: int
    kind: int
    index: int


def segment_records(path: Path) -> list[RecordSpan]:
    """Where each intact record of a WAL segment lies, read by its documented format
    (magic u32 LE | length u32 LE | msgpack [group, kind, index, body] | crc32 u32 LE)."""
    data = path.read_bytes()
    spans, offset = [], 0
    while offset + 8 <= len(data):
        magic = int.from_bytes(data[offset : offset + 4], "little")
        length = int.from_bytes(data[offset + 4 : offset + 8], "little")
        end = offset + 12 + length
        if magic != MAGIC or end > len(data):
            break
        group, kind, index, _ = msgpack.unpackb(data[offset + 8 : end - 4], raw=False)
        spans.append(RecordSpan(offset, end, group, kind, index))
        offset = end
    return spans


def torn_tail_events(logfile: Path, offset: int) -> list[dict[str, Any]]:
    """The node's `wal_torn_tail_truncated` log events written after `offset`."""
    events = []
    with logfile.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "wal_torn_tail_truncated":
                events.append(event)
    return events
