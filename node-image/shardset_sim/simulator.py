"""One deterministic simulation of a Raft cluster, reproducible from a seed.

A single seeded loop drives every node, the network, the disks and the
clients (as in FoundationDB's and TigerBeetle's simulators). Per tick it may
inject a fault, start client operations, tick every live node (each with its
own bounded clock drift), then deliver due messages and process Readies in a
random interleaving. Safety is checked after every step; the clients' history
is checked for linearizability at the end; then the faults are healed and the
cluster must make progress again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from shardset_raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Raft,
    RaftConfig,
    RaftError,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from shardset_sim.invariants import SafetyChecker, Violation
from shardset_sim.kv import Command, KvMachine
from shardset_sim.linearizability import Op, check_kv
from shardset_sim.network import Faults, Network

MAX_NODES = 7
ALL_FAULTS = (
    "partition",
    "partition",
    "crash",
    "crash_leader",
    "crash_leader",
    "conf",
    "conf",
    "transfer",
    "heal",
)
KEYS = ("a", "b", "c")


@dataclass
class Disk:
    """What survives a crash: exactly what a Ready asked to persist, nothing more."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    # Write order, for a lying disk: the write number of each entry held, and the
    # hard states written (number, state), so a cut can take both in WAL order.
    writes: int = 0
    entry_writes: dict[int, int] = field(default_factory=dict)
    hard_states: list[tuple[int, HardState]] = field(default_factory=list)
    snapshot_write: int = 0

    def persist(self, rd: Ready) -> None:
        self.writes += 1
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
            self.snapshot_write = self.writes
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(rd.entries)
            for e in rd.entries:
                self.entry_writes[e.index] = self.writes
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
            self.hard_states.append((self.writes, rd.hard_state))
            del self.hard_states[:-64]

    def compact(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]

    def lose_tail(self, count: int) -> int:
        """The disk lied: the last `count` entries, synced and maybe acknowledged, are
        gone at restart. Storage notices the cut (a damaged record) but not what the
        records held, so it marks the log recovering up to the old last index, as
        the node's WAL does (conservatively, from the bytes it cut). Returns it."""
        if not self.entries:
            return 0
        lost_upto = self.entries[-1].index
        self.entries = self.entries[: max(0, len(self.entries) - count)]
        kept = self.entries[-1].index if self.entries else self.snapshot.meta.index
        # Hard states written with or after the first lost entry are lost too (the
        # WAL is one ordered file); the snapshot lives in its own synced file.
        first_lost = self.entry_writes.get(kept + 1, self.writes + 1)
        cut = max(first_lost, self.snapshot_write + 1)
        older = [hs for n, hs in self.hard_states if n < cut]
        hs = older[-1] if older else self.hard_state
        self.hard_states = [(n, h) for n, h in self.hard_states if n < cut]
        self.hard_state = replace(
            hs,
            commit=min(hs.commit, kept),
            recovering=max(self.hard_state.recovering, hs.recovering, lost_upto),
        )
        return lost_upto


@dataclass
class Pending:
    """A client operation waiting for its answer from one node."""

    client: int
    op: Op
    node: int
    deadline: int
    read_index: int | None = None  # reads: released by a ReadState, then wait for apply


@dataclass
class SimNode:
    id: int
    disk: Disk
    raft: Raft | None = None
    kv: KvMachine = field(default_factory=KvMachine)
    clock_rate: float = 1.0
    clock_acc: float = 0.0


@dataclass(frozen=True)
class SimConfig:
    """A schedule's shape, drawn from the seed."""

    voters: int
    spares: int
    ticks: int
    pre_vote: bool
    check_quorum: bool
    lease_reads: bool
    max_drift: float  # fractional clock-rate spread, |rate - 1| <= max_drift
    heartbeat_tick: int
    max_inflight: int
    max_entries: int
    faults: Faults
    fault_rate: float
    nemesis: tuple[str, ...]  # the fault kinds this schedule draws from
    ready_crash: float  # chance a node dies after a disk write, before it sends
    clients: int

    @staticmethod
    def draw(rng: random.Random) -> SimConfig:
        profile = rng.random()
        if profile < 0.25:
            return SimConfig._draw_churn(rng)
        if profile < 0.45:
            return SimConfig._draw_split_brain(rng)
        if profile >= 0.85:
            return SimConfig._draw_lying_disk(rng)
        voters = rng.choice((1, 2, 3, 3, 3, 4, 5, 5, 7))
        check_quorum = rng.random() < 0.8
        lease = check_quorum and rng.random() < 0.3
        return SimConfig(
            voters=voters,
            spares=min(MAX_NODES - voters, rng.randint(0, 2)),
            ticks=rng.randint(100, 220),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            lease_reads=lease,
            # Clocks run at rates within 5% of each other: far beyond real crystals, and
            # within what Raft's randomized timeouts absorb (at 30%, seed 31698 showed
            # a fast clock with a stale log winning every election race, without PreVote).
            max_drift=rng.choice((0.0, 0.02, 0.05)),
            heartbeat_tick=rng.choice((1, 1, 2, 3)),
            max_inflight=rng.choice((1, 2, 4, 64)),
            max_entries=rng.choice((1, 1, 2, 8, 256)),
            faults=Faults(
                loss=rng.choice((0.0, 0.01, 0.05, 0.2)),
                duplicate=rng.choice((0.0, 0.02, 0.1)),
                max_delay=rng.choice((0, 1, 2, 4)),
            ),
            fault_rate=rng.choice((0.02, 0.05, 0.1)),
            nemesis=ALL_FAULTS,
            ready_crash=0.002,
            clients=rng.randint(1, 6),
        )

    @staticmethod
    def _draw_split_brain(rng: random.Random) -> SimConfig:
        """Leaders cut off for long stretches while clients keep reading and writing on
        both sides: where a read that skips confirming leadership goes stale."""
        check_quorum = rng.random() < 0.5
        return SimConfig(
            voters=rng.choice((3, 5)),
            spares=0,
            ticks=rng.randint(150, 260),
            pre_vote=rng.random() < 0.5,
            check_quorum=check_quorum,
            lease_reads=check_quorum and rng.random() < 0.5,
            max_drift=0.0,
            heartbeat_tick=rng.choice((1, 2)),
            max_inflight=64,
            max_entries=rng.choice((1, 64)),
            faults=Faults(loss=0.0, duplicate=0.0, max_delay=rng.choice((0, 1, 2))),
            fault_rate=rng.choice((0.02, 0.04)),
            nemesis=("isolate_leader_long",),
            ready_crash=0.0,
            clients=rng.randint(3, 6),
        )

    @staticmethod
    def _draw_lying_disk(rng: random.Random) -> SimConfig:
        """Disks that lose synced log tails, with crashes and cut-off leaders: the
        schedules where a node that forgot acknowledged entries could elect a
        leader without them (issue 15; Protocol-Aware Recovery)."""
        return SimConfig(
            voters=rng.choice((3, 3, 5)),
            spares=0,
            ticks=rng.randint(150, 260),
            pre_vote=rng.random() < 0.7,
            check_quorum=rng.random() < 0.7,
            lease_reads=False,
            max_drift=0.0,
            heartbeat_tick=rng.choice((1, 2)),
            max_inflight=rng.choice((1, 64)),
            max_entries=rng.choice((1, 4)),
            faults=Faults(
                loss=rng.choice((0.0, 0.02)), duplicate=0.0, max_delay=rng.choice((0, 1, 2))
            ),
            fault_rate=rng.choice((0.05, 0.1, 0.2)),
            nemesis=(
                "disk_lied",
                "disk_lied",
                "isolate_leader",
                "isolate_leader",
                "crash_leader",
                "crash",
                "heal",
            ),
            ready_crash=0.0,
            clients=rng.randint(2, 5),
        )

    @staticmethod
    def _draw_churn(rng: random.Random) -> SimConfig:
        """Leaders killed and restarted over and over, entries shipped one at a time:
        the schedules of the paper's Figure 8, where old-term entries meet new leaders."""
        return SimConfig(
            voters=rng.choice((3, 5)),
            spares=0,
            ticks=rng.randint(100, 220),
            pre_vote=rng.random() < 0.5,
            check_quorum=rng.random() < 0.5,
            lease_reads=False,
            max_drift=0.0,
            heartbeat_tick=rng.choice((1, 2, 3)),
            max_inflight=rng.choice((1, 64)),
            max_entries=1,
            faults=Faults(
                loss=rng.choice((0.0, 0.05)), duplicate=0.0, max_delay=rng.choice((1, 3))
            ),
            fault_rate=rng.choice((0.1, 0.2, 0.3)),
            nemesis=("isolate_leader", "isolate_leader", "isolate_leader", "crash_leader", "crash"),
            ready_crash=rng.choice((0.005, 0.02, 0.05)),
            clients=rng.randint(2, 4),
        )


@dataclass
class SimResult:
    seed: int
    steps: int = 0
    violation: str | None = None
    linearizable: bool = True
    lin_unknown: bool = False
    ops: int = 0
    committed: int = 0
    elections: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None and self.linearizable


ELECTION_TICK = 10


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        raft_class: type[Raft] = Raft,
        trace: bool = False,
        ticks: int | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = SimConfig.draw(self.rng)
        if ticks is not None:  # a shorter prefix of the same schedule, for shrinking
            self.cfg = replace(self.cfg, ticks=ticks)
        self.raft_class = raft_class
        self.trace = trace
        self.net = Network(random.Random(self.rng.getrandbits(64)), self.cfg.faults)
        self.safety = SafetyChecker()
        self.result = SimResult(seed)
        self.now = 0  # ticks
        self.clock = 0  # global step counter: the real-time order of the history
        self.nodes: dict[int, SimNode] = {}
        self.dirty: set[int] = set()  # nodes that may have a Ready
        voters = frozenset(range(1, self.cfg.voters + 1))
        for i in range(1, self.cfg.voters + self.cfg.spares + 1):
            node = SimNode(i, Disk())
            drift = self.cfg.max_drift
            node.clock_rate = 1.0 + self.rng.uniform(-drift, drift)
            self.nodes[i] = node
            if i in voters:
                # Provisioning writes the initial membership before the process starts.
                node.disk.snapshot = Snapshot(SnapshotMeta(0, 0, ConfState(voters)))
                self._start(node)
        self.history: list[Op] = []
        self.pending: dict[int, Pending] = {}  # op_id -> pending
        self.busy_clients: set[int] = set()
        self.next_op = 1
        self.heal_at = -1
        self.restart_at: dict[int, int] = {}
        self.faults_on = True

    # ============================================================ node lifecycle
    def _raft_config(self, node_id: int) -> RaftConfig:
        return RaftConfig(
            id=node_id,
            election_tick=ELECTION_TICK,
            heartbeat_tick=self.cfg.heartbeat_tick,
            max_inflight=self.cfg.max_inflight,
            max_entries_per_msg=self.cfg.max_entries,
            pre_vote=self.cfg.pre_vote,
            check_quorum=self.cfg.check_quorum,
            lease_reads=self.cfg.lease_reads,
            max_clock_drift_ticks=2,
            snapshot_timeout_ticks=30,
            seed=self.seed * 7919 + node_id * 131 + self.now,
        )

    def _start(self, node: SimNode) -> None:
        d = node.disk
        node.raft = self.raft_class(
            self._raft_config(node.id),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        node.kv = KvMachine()
        node.kv.restore(d.snapshot.meta.index, d.snapshot.data)
        self.dirty.add(node.id)

    def _crash(self, node: SimNode) -> None:
        self._event(f"crash {node.id}")
        node.raft = None
        for op_id, p in list(self.pending.items()):
            if p.node == node.id:
                self._give_up(op_id)

    def _event(self, text: str) -> None:
        if self.trace:
            self.result.events.append(f"t={self.now} {text}")

    # ============================================================ the main loop
    def run(self) -> SimResult:
        try:
            for _ in range(self.cfg.ticks):
                self._tick(faults=True, clients=True)
            self._heal_all()
            self._check_progress()
        except Violation as v:
            self.result.violation = str(v)
        self._finish()
        return self.result

    def _tick(self, faults: bool, clients: bool) -> None:
        self.now += 1
        self.faults_on = faults
        if faults:
            self._maybe_fault()
        if clients:
            self._start_client_ops()
        for node in self.nodes.values():
            if node.raft is None:
                continue
            node.clock_acc += node.clock_rate
            while node.clock_acc >= 1.0:
                node.clock_acc -= 1.0
                node.raft.tick()
            self.dirty.add(node.id)
        self._expire_ops()
        self.net.advance(self.now)
        self._settle()

    def _settle(self) -> None:
        """Deliver due messages and handle Readies, interleaved at random."""
        for _ in range(400):
            ready = []
            # Sets of small ints iterate in a fixed order: still deterministic.
            for nid in list(self.dirty):
                raft = self.nodes[nid].raft
                if raft is not None and raft.has_ready():
                    ready.append(self.nodes[nid])
                else:
                    self.dirty.discard(nid)
            has_msg = bool(self.net.due)
            if not ready and not has_msg:
                return
            self.clock += 1
            self.result.steps += 1
            roll = self.rng.random()
            if ready and (not has_msg or roll < 0.5):
                self._handle_ready(ready[int(roll * 2 * len(ready)) % len(ready)])
            else:
                m = self.net.pop_due()
                if m is None:
                    continue
                target = self.nodes.get(m.to)
                if target is not None and target.raft is not None:
                    target.raft.step(m)
                    self.dirty.add(m.to)

    def _handle_ready(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        old_commit = node.disk.hard_state.commit
        rd = raft.ready()
        # 1. persist (snapshot, entries, hard state)
        node.disk.persist(rd)
        if rd.snapshot is not None:
            node.kv.restore(rd.snapshot.meta.index, rd.snapshot.data)
        self.safety.on_persist(node.id, raft, rd.entries)
        if rd.hard_state is not None and rd.hard_state.commit > old_commit:
            self.safety.on_commit(node.id, raft, old_commit, rd.hard_state.commit)
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.result.elections += 1
            self._event(f"leader {node.id} term {rd.soft_state.term}")
            self.safety.on_leader(node.id, rd.soft_state.term, raft)
        if self.faults_on and self.rng.random() < self.cfg.ready_crash:
            # Crash after the disk write, before anything is sent or applied.
            self._crash(node)
            self.restart_at[node.id] = self.now + self.rng.randint(1, 20)
            return
        # 2. send
        for m in rd.messages:
            self.net.send(self.now, m)
        # 3. apply, answer reads
        for e in rd.committed_entries:
            self.safety.on_apply(node.id, e)
            self._apply(node, e)
        for rs in rd.read_states:
            p = self.pending.get(rs.request)
            if p is not None and p.node == node.id:
                p.read_index = rs.index
        raft.advance(rd)
        self._serve_reads(node)
        self._maybe_compact(node)

    def _apply(self, node: SimNode, e: Entry) -> None:
        if e.type != EntryType.NORMAL or not e.data:
            node.kv.applied = e.index
            return
        cmd = Command.decode(e.data)
        result = node.kv.apply(e.index, cmd)
        self.result.committed = max(self.result.committed, e.index)
        p = self.pending.get(cmd.op_id)
        if p is not None and p.node == node.id:
            self._complete(cmd.op_id, result)

    def _serve_reads(self, node: SimNode) -> None:
        for op_id, p in list(self.pending.items()):
            if p.node == node.id and p.read_index is not None and node.kv.applied >= p.read_index:
                self._complete(op_id, node.kv.data.get(p.op.key))

    def _maybe_compact(self, node: SimNode) -> None:
        raft = node.raft
        if raft is None or raft.applied - raft.log.meta.index < 20 or self.rng.random() > 0.1:
            return
        index = node.kv.applied
        snap = raft.compact(index, node.kv.snapshot())
        node.disk.compact(snap)

    # ============================================================ clients
    def _start_client_ops(self) -> None:
        for client in range(self.cfg.clients):
            if client in self.busy_clients or self.rng.random() > 0.5:
                continue
            node = self._pick_node()
            if node is None or node.raft is None:
                continue
            op_id = self.next_op
            self.next_op += 1
            key = self.rng.choice(KEYS)
            kind = self.rng.choice(("put", "put", "get", "get", "cas", "delete"))
            value = f"v{op_id}" if kind in ("put", "cas") else None
            expected = None
            if kind == "cas":
                expected = node.kv.data.get(key) if self.rng.random() < 0.7 else f"v{op_id - 1}"
            op = Op(client, kind, key, value, expected, invoke=float(self.clock))
            try:
                if kind == "get":
                    # Reads choose per request, as the node's read modes do: a lease
                    # when the config keeps one, else a heartbeat round.
                    lease = self.cfg.lease_reads and self.rng.random() < 0.7
                    node.raft.read_index(op_id, use_lease=lease)
                else:
                    node.raft.propose(Command(op_id, kind, key, value, expected).encode())
            except RaftError:
                continue  # refused at once: nothing happened, nothing to record
            self.busy_clients.add(client)
            self.dirty.add(node.id)
            self.pending[op_id] = Pending(client, op, node.id, self.now + 2 * ELECTION_TICK)

    def _pick_node(self) -> SimNode | None:
        """Mostly the newest leader (a client that followed redirects), sometimes any
        node that believes it leads (a client with a stale leader cache), sometimes
        any node at all."""
        live = [n for n in self.nodes.values() if n.raft is not None]
        if not live:
            return None
        leaders = [n for n in live if n.raft is not None and n.raft.role == Role.LEADER]
        roll = self.rng.random()
        if leaders and roll < 0.6:
            return max(leaders, key=lambda n: n.raft.term if n.raft else 0)
        if leaders and roll < 0.9:
            return self.rng.choice(leaders)
        return self.rng.choice(live)

    def _complete(self, op_id: int, result: Any) -> None:
        p = self.pending.pop(op_id)
        self.busy_clients.discard(p.client)
        op = p.op
        self.history.append(
            Op(
                op.client,
                op.kind,
                op.key,
                op.value,
                op.expected,
                op.invoke,
                float(self.clock),
                result,
            )
        )

    def _give_up(self, op_id: int) -> None:
        """A timed-out or orphaned operation: it may or may not have happened."""
        p = self.pending.pop(op_id)
        self.busy_clients.discard(p.client)
        if p.op.kind != "get":
            self.history.append(p.op)  # complete=None: indeterminate

    def _expire_ops(self) -> None:
        for op_id, p in list(self.pending.items()):
            if self.now >= p.deadline:
                self._give_up(op_id)

    # ============================================================ faults
    def _maybe_fault(self) -> None:
        if self.now == self.heal_at:
            self.net.heal()
            self._event("heal")
        for nid, at in list(self.restart_at.items()):
            if self.now >= at:
                del self.restart_at[nid]
                self._event(f"restart {nid}")
                self._start(self.nodes[nid])
        if self.rng.random() >= self.cfg.fault_rate:
            return
        kind = self.rng.choice(self.cfg.nemesis)
        getattr(self, f"_fault_{kind}")()

    def _fault_heal(self) -> None:
        self.net.heal()
        self._event("heal")

    def _fault_partition(self) -> None:
        ids = sorted(self.nodes)
        shape = self.rng.choice(("isolate", "split", "bridge", "oneway"))
        if shape == "isolate":
            lone = self.rng.choice(ids)
            self.net.split({lone}, set(ids) - {lone})
        elif shape == "split":
            cut = self.rng.sample(ids, self.rng.randint(1, max(1, len(ids) // 2)))
            self.net.split(set(cut), set(ids) - set(cut))
        elif shape == "bridge" and len(ids) >= 3:
            bridge = self.rng.choice(ids)
            rest = [i for i in ids if i != bridge]
            self.rng.shuffle(rest)
            half = len(rest) // 2
            self.net.split(set(rest[:half]) | {bridge}, set(rest[half:]) | {bridge})
        else:
            for _ in range(self.rng.randint(1, 3)):
                a, b = self.rng.sample(ids, 2) if len(ids) > 1 else (ids[0], ids[0])
                self.net.one_way(a, b)
        self._event(f"partition {shape} cut={sorted(self.net.cut)}")
        self.heal_at = self.now + self.rng.randint(5, 60)

    def _fault_crash(self) -> None:
        live = [n for n in self.nodes.values() if n.raft is not None]
        if not live:
            return
        node = self.rng.choice(live)
        self._crash(node)
        self.restart_at[node.id] = self.now + self.rng.randint(1, 40)

    def _fault_isolate_leader(self) -> None:
        """Cut the leader off (healing older cuts): it keeps taking proposals it cannot
        commit, so logs grow divergent tails of different terms."""
        leader = self._leader()
        if leader is None:
            return
        self.net.heal()
        self.net.split({leader.id}, set(self.nodes) - {leader.id})
        self._event(f"isolate leader {leader.id}")
        self.heal_at = self.now + self.rng.randint(5, 40)

    def _fault_isolate_leader_long(self) -> None:
        if self.heal_at < self.now:  # one long partition at a time
            self._fault_isolate_leader()
            self.heal_at = self.now + self.rng.randint(30, 70)

    def _fault_disk_lied(self) -> None:
        """Crash a node whose disk loses its log tail, synced entries included.

        One lying disk at a time: were a second node to lose acknowledged entries
        before the first recovered, a majority could have lost them (no protocol
        survives that). Plain crashes stay free to combine with it.
        """
        if any(n.disk.hard_state.recovering for n in self.nodes.values()):
            return
        live = [n for n in self.nodes.values() if n.raft is not None and n.disk.entries]
        if not live:
            return
        node = self.rng.choice(live)
        self._crash(node)
        upto = node.disk.lose_tail(self.rng.randint(1, 4))
        self._event(f"disk of {node.id} lied: tail cut, recovering up to {upto}")
        self.restart_at[node.id] = self.now + self.rng.randint(1, 20)

    def _fault_crash_leader(self) -> None:
        """Kill the leader and bring it back soon: the schedule of the paper's Figure 8."""
        leader = self._leader()
        if leader is not None:
            self._crash(leader)
            self.restart_at[leader.id] = self.now + self.rng.randint(1, 15)

    def _leader(self) -> SimNode | None:
        leaders = [
            n for n in self.nodes.values() if n.raft is not None and n.raft.role == Role.LEADER
        ]
        return max(leaders, key=lambda n: n.raft.term if n.raft else 0) if leaders else None

    def _fault_transfer(self) -> None:
        leader = self._leader()
        if leader is None or leader.raft is None:
            return
        voters = sorted(leader.raft.conf.voters - {leader.id})
        if voters:
            to = self.rng.choice(voters)
            self._event(f"transfer {leader.id}->{to}")
            leader.raft.transfer_leadership(to)
            self.dirty.add(leader.id)

    def _fault_conf(self) -> None:
        leader = self._leader()
        if leader is None or leader.raft is None:
            return
        conf = leader.raft.conf
        outside = [i for i in self.nodes if i not in conf.members()]
        choices: list[ConfChange] = []
        if outside:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, self.rng.choice(outside)))
        if conf.learners:
            choices.append(
                ConfChange(ConfChangeType.ADD_VOTER, self.rng.choice(sorted(conf.learners)))
            )
        removable = sorted(conf.members() - {leader.id})
        if removable and len(conf.voters) > 1:
            choices.append(ConfChange(ConfChangeType.REMOVE, self.rng.choice(removable)))
        if not choices:
            return
        change = self.rng.choice(choices)
        try:
            index = leader.raft.propose_conf_change(change)
        except RaftError as e:
            self._event(f"conf {change.type.name} {change.node} refused: {e}")
            return
        self._event(f"conf {change.type.name} {change.node} at {index}")
        self.dirty.add(leader.id)
        target = self.nodes[change.node]
        if change.type == ConfChangeType.ADD_LEARNER and target.raft is None:
            # A spare joins with an empty disk and no membership of its own; a node
            # removed earlier comes back with its disk (ids are never reused blank).
            self.restart_at.pop(target.id, None)
            self._start(target)

    # ============================================================ the end
    def _heal_all(self) -> None:
        # Loss and duplication are faults too: the progress check runs on a sound
        # network (delays stay). Without PreVote, a lossy network can keep
        # elections failing for hundreds of ticks, which is no safety question.
        self.net.heal()
        self.net.faults = Faults(loss=0.0, duplicate=0.0, max_delay=self.cfg.faults.max_delay)
        for nid in list(self.restart_at):
            del self.restart_at[nid]
            self._start(self.nodes[nid])
        # As the operator does, stop replicas whose removal is committed: a removed
        # node that never heard of its removal would, without PreVote, keep raising
        # terms and disrupt elections (thesis 4.2.3). It ran through the fault phase.
        live = [n.raft for n in self.nodes.values() if n.raft is not None]
        if live:
            newest = max(live, key=lambda r: r.committed)
            members = newest.log.conf_at(newest.committed).members()
            for node in self.nodes.values():
                if node.raft is not None and node.id not in members:
                    self._crash(node)

    def _check_progress(self) -> None:
        """After healing, a majority of voters is up: a write must commit again."""
        for _ in range(30 * ELECTION_TICK):
            self._tick(faults=False, clients=False)
            leader = self._leader()
            if leader is None or leader.raft is None:
                continue
            raft = leader.raft
            if raft.committed >= raft.term_start_index and raft.lead_transferee == 0:
                target = raft.propose(b"")
                self.dirty.add(leader.id)
                for _ in range(10 * ELECTION_TICK):
                    self._tick(faults=False, clients=False)
                    if leader.raft is not raft or raft.committed >= target:
                        break
                if leader.raft is raft and raft.committed >= target:
                    return
        raise Violation("liveness", "no write committed within 400 ticks after healing")

    def _finish(self) -> None:
        for op_id in list(self.pending):
            self._give_up(op_id)
        self.result.ops = len(self.history)
        if self.result.violation is None:
            check = check_kv(self.history, max_states=200_000)
            self.result.linearizable = check.ok
            self.result.lin_unknown = check.unknown
            if not check.ok:
                self.result.violation = f"linearizability: {check.explanation}"


def run_seed(
    seed: int, *, raft_class: type[Raft] = Raft, trace: bool = False, ticks: int | None = None
) -> SimResult:
    return Simulation(seed, raft_class=raft_class, trace=trace, ticks=ticks).run()


def shrink(seed: int, raft_class: type[Raft] = Raft) -> int:
    """The fewest fault-phase ticks of this seed's schedule that still fail."""
    hi = Simulation(seed).cfg.ticks
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if run_seed(seed, raft_class=raft_class, ticks=mid).ok:
            lo = mid + 1
        else:
            hi = mid
    return hi
