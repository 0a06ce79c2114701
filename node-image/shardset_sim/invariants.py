"""Raft's safety properties, checked incrementally after every simulator step.

- Election safety: at most one leader per term.
- Log matching: checked through its inductive form. Every entry any node ever
  persists is registered by (index, term) with its payload and the term of the
  entry before it; two nodes holding (index, term) must agree on both, which by
  induction makes their logs identical up to that index.
- Leader completeness: a new leader's log holds every entry known committed.
- State machine safety: every node commits and applies the same entry at an index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardset_raft import Compacted, Entry, NodeId, Raft, Unavailable


@dataclass
class Violation(Exception):
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class SafetyChecker:
    leaders: dict[int, NodeId] = field(default_factory=dict)  # term -> leader
    entries: dict[tuple[int, int], tuple[bytes, int, int]] = field(default_factory=dict)
    committed: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (term, data)
    # index -> the lowest term of any node seen committing it: never below the term it
    # was really committed in, since every node learns commitment from a leader of that
    # term or a later one. Only leaders of later terms must hold the entry.
    committed_in: dict[int, int] = field(default_factory=dict)
    max_commit: int = 0
    checks: int = 0

    def on_leader(self, node: NodeId, term: int, raft: Raft) -> None:
        self.checks += 1
        other = self.leaders.setdefault(term, node)
        if other != node:
            raise Violation("election-safety", f"nodes {other} and {node} both lead term {term}")
        # Leader completeness (Raft paper 5.4): an entry committed in term T is in the
        # log of every leader of a term after T. A leader of an older term, elected late
        # by vote responses that were delayed, may lack it; it can commit nothing there.
        log = raft.log
        for index in range(self.max_commit, 0, -1):
            in_term = self.committed_in.get(index)
            if in_term is None or in_term >= term:
                continue
            if index <= log.meta.index:
                break  # compacted: covered by the snapshot
            if log.last_index() < index:
                raise Violation(
                    "leader-completeness",
                    f"leader {node} of term {term} ends at {log.last_index()} "
                    f"but {index} was committed in term {in_term}",
                )
            want = self.committed[index]
            if log.term(index) != want[0]:
                raise Violation(
                    "leader-completeness",
                    f"leader {node} of term {term} has term {log.term(index)} at index "
                    f"{index}, committed in term {in_term} with term {want[0]}",
                )

    def on_persist(self, node: NodeId, raft: Raft, entries: tuple[Entry, ...]) -> None:
        """`entries` were just persisted by `node` (already in its in-memory log)."""
        self.checks += 1
        for e in entries:
            try:
                prev_term = raft.log.term(e.index - 1)
            except (Compacted, Unavailable):
                continue
            key = (e.index, e.term)
            record = (e.data, int(e.type), prev_term)
            seen = self.entries.setdefault(key, record)
            if seen != record:
                raise Violation(
                    "log-matching",
                    f"node {node} holds a different entry at index {e.index} term {e.term} "
                    f"(payload or preceding term differ: {seen[2]} vs {prev_term})",
                )

    def on_commit(self, node: NodeId, raft: Raft, old: int, new: int) -> None:
        self.checks += 1
        log = raft.log
        for index in range(max(old + 1, log.first_index()), new + 1):
            term = log.term(index)
            data = log.slice(index, index + 1)[0].data
            self._agree("commit", node, index, term, data)
            self.committed_in[index] = min(self.committed_in.get(index, raft.term), raft.term)
        self.max_commit = max(self.max_commit, new)

    def on_apply(self, node: NodeId, entry: Entry) -> None:
        self._agree("apply", node, entry.index, entry.term, entry.data)

    def _agree(self, what: str, node: NodeId, index: int, term: int, data: bytes) -> None:
        seen = self.committed.setdefault(index, (term, data))
        if seen != (term, data):
            raise Violation(
                "state-machine-safety",
                f"node {node} {what}s term {term} at index {index}, "
                f"but term {seen[0]} was committed there",
            )
