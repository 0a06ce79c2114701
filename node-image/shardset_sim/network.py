"""A simulated network: per-message delay, loss, duplication, and link cuts.

Everything is driven by the simulator's seeded RNG, so a schedule replays exactly.
Cuts are directional, which gives symmetric and asymmetric partitions, and a
bridge (two sides that both reach one node) as special cases.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from shardset_raft import Message, NodeId


@dataclass(frozen=True, slots=True)
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 2  # ticks


@dataclass
class Network:
    rng: random.Random
    faults: Faults
    later: list[tuple[int, int, Message]] = field(default_factory=list)  # heap: (at, seq, msg)
    due: list[Message] = field(default_factory=list)  # deliverable now, in no order
    cut: set[tuple[NodeId, NodeId]] = field(default_factory=set)  # (from, to) pairs dropped
    sent: int = 0
    dropped: int = 0

    def send(self, now: int, m: Message) -> None:
        self.sent += 1
        rand = self.rng.random
        faults = self.faults
        if (m.frm, m.to) in self.cut or (faults.loss and rand() < faults.loss):
            self.dropped += 1
            return
        copies = 2 if faults.duplicate and rand() < faults.duplicate else 1
        for _ in range(copies):
            delay = int(rand() * (faults.max_delay + 1)) if faults.max_delay else 0
            if delay == 0:
                self.due.append(m)
            else:
                heapq.heappush(self.later, (now + delay, self.sent, m))

    def advance(self, now: int) -> None:
        """Move messages whose delivery time has come to the deliverable pool."""
        while self.later and self.later[0][0] <= now:
            self.due.append(heapq.heappop(self.later)[2])

    def pop_due(self) -> Message | None:
        """A random deliverable message (random choice reorders deliveries)."""
        if not self.due:
            return None
        i = int(self.rng.random() * len(self.due))
        m = self.due[i]
        self.due[i] = self.due[-1]
        self.due.pop()
        if (m.frm, m.to) in self.cut:  # a cut made while the message was in flight
            self.dropped += 1
            return None
        return m

    # --- partitions ---------------------------------------------------------------
    def heal(self) -> None:
        self.cut.clear()

    def split(self, side_a: set[NodeId], side_b: set[NodeId]) -> None:
        """Symmetric partition between two sides (nodes in both sides form a bridge)."""
        for a in side_a - side_b:
            for b in side_b - side_a:
                self.cut.add((a, b))
                self.cut.add((b, a))

    def one_way(self, frm: NodeId, to: NodeId) -> None:
        self.cut.add((frm, to))
