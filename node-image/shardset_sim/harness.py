"""A hand-driven cluster for scenario tests (the paper's figures, corner cases).

Unlike the randomized simulator, nothing happens here unless a test asks: the
test ticks a chosen node, delivers messages (optionally filtered), cuts links,
crashes and restarts nodes. Every Ready is persisted to a simulated disk first,
as the core's contract requires, and every step runs the safety checker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from shardset_raft import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Raft,
    RaftConfig,
    Role,
    Snapshot,
    SnapshotMeta,
)
from shardset_sim.invariants import SafetyChecker
from shardset_sim.simulator import Disk

Filter = Callable[[Message], bool]


class Cluster:
    def __init__(
        self,
        ids: list[int],
        *,
        raft_class: type[Raft] = Raft,
        config: RaftConfig | None = None,
    ) -> None:
        self.raft_class = raft_class
        self.base = config or RaftConfig(id=1, pre_vote=False, check_quorum=False)
        self.disks: dict[int, Disk] = {}
        self.nodes: dict[int, Raft | None] = {}
        self.outbox: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.safety = SafetyChecker()
        self.applied: dict[int, list[bytes]] = {}
        self.reads: dict[int, list[int]] = {}  # node -> released read requests
        conf = ConfState(frozenset(ids))
        for i in ids:
            self.disks[i] = Disk(snapshot=Snapshot(SnapshotMeta(0, 0, conf)))
            self.start(i)

    @classmethod
    def with_logs(cls, logs: dict[int, list[int]], term: int, **kw: object) -> Cluster:
        """Nodes whose disks already hold entries of the given terms (a paper figure)."""
        c = cls(sorted(logs), **kw)  # type: ignore[arg-type]
        for i, terms in logs.items():
            d = c.disks[i]
            # The same (index, term) carries the same payload on every node (log matching).
            d.entries = [
                Entry(t, n, EntryType.NORMAL, f"{n}:{t}".encode())
                for n, t in enumerate(terms, start=1)
            ]
            d.hard_state = HardState(term=term)
            c.start(i)
        return c

    # --- lifecycle -------------------------------------------------------------
    def start(self, i: int) -> Raft:
        d = self.disks.setdefault(i, Disk())
        raft = self.raft_class(
            replace(self.base, id=i, seed=i),
            hard_state=d.hard_state,
            snapshot=d.snapshot,
            entries=list(d.entries),
        )
        self.nodes[i] = raft
        self.applied[i] = []
        return raft

    def crash(self, i: int) -> None:
        self.nodes[i] = None
        self.outbox = [m for m in self.outbox if m.frm != i]

    def node(self, i: int) -> Raft:
        raft = self.nodes[i]
        assert raft is not None, f"node {i} is down"
        return raft

    # --- driving ---------------------------------------------------------------
    def process(self) -> None:
        """Handle every pending Ready: persist, then queue messages, then apply."""
        for i, raft in self.nodes.items():
            while raft is not None and raft.has_ready():
                old_commit = self.disks[i].hard_state.commit
                rd = raft.ready()
                self.disks[i].persist(rd)
                self.safety.on_persist(i, raft, rd.entries)
                if rd.hard_state is not None and rd.hard_state.commit > old_commit:
                    self.safety.on_commit(i, raft, old_commit, rd.hard_state.commit)
                if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
                    self.safety.on_leader(i, rd.soft_state.term, raft)
                self.outbox.extend(rd.messages)
                self.reads.setdefault(i, []).extend(r.request for r in rd.read_states)
                for e in rd.committed_entries:
                    self.safety.on_apply(i, e)
                    self.applied[i].append(e.data)
                raft.advance(rd)

    def deliver(self, keep: Filter | None = None, rounds: int = 50) -> None:
        """Deliver queued messages until quiet; `keep` may drop some (returns False)."""
        for _ in range(rounds):
            self.process()
            if not self.outbox:
                return
            batch, self.outbox = self.outbox, []
            for m in batch:
                target = self.nodes.get(m.to)
                if target is None or (m.frm, m.to) in self.cut:
                    continue
                if keep is not None and not keep(m):
                    continue
                target.step(m)
        self.process()

    def elect(self, i: int, keep: Filter | None = None) -> None:
        """Let node i's election timer fire (no one else ticks) and run the election."""
        raft = self.node(i)
        for j, other in self.nodes.items():
            if other is not None and j != i:
                # Time passes for the others too (any leader's lease on them lapses),
                # but their own election timers are held back: node i fires first.
                other.ticks_since_leader = max(other.ticks_since_leader, other.cfg.election_tick)
        start = (raft.term, raft.role)
        for _ in range(3 * raft.cfg.election_tick):
            raft.tick()
            if (raft.term, raft.role) != start and raft.role != Role.PRE_CANDIDATE:
                break
            if raft.role == Role.PRE_CANDIDATE:
                self.deliver(keep)
        self.deliver(keep)

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for raft in self.nodes.values():
                if raft is not None:
                    raft.tick()
            self.deliver()

    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def leader(self) -> int | None:
        leaders = [i for i, r in self.nodes.items() if r is not None and r.role == Role.LEADER]
        return max(leaders, key=lambda i: self.node(i).term) if leaders else None
