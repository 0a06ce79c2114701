"""The in-memory Raft log: a compacted prefix (the snapshot) plus entries.

The caller persists what ``unstable_entries`` returns; ``stable`` marks how far
the caller has confirmed durability. The log also answers which membership is in
force: the newest CONF entry wins, committed or not (Raft thesis 4.1).
"""

from __future__ import annotations

from bisect import bisect_right

from shardset_raft.errors import Compacted, Unavailable
from shardset_raft.types import ConfState, Entry, EntryType, Snapshot, SnapshotMeta


class RaftLog:
    def __init__(
        self, snapshot: Snapshot, entries: tuple[Entry, ...] | list[Entry], commit: int
    ) -> None:
        self.snapshot = snapshot  # the latest snapshot, with its data, to ship to laggards
        self.entries: list[Entry] = []
        self.conf_indexes: list[int] = []  # indexes of CONF entries in `entries`, ascending
        self.unstable_snapshot: Snapshot | None = None
        self.committed = max(commit, snapshot.meta.index)
        self.applied = snapshot.meta.index
        self.stable = snapshot.meta.index
        self._append_at(snapshot.meta.index + 1, list(entries))
        self.stable = self.last_index()
        # A log whose tail storage cut may end below the commit index it recorded.
        self.committed = min(self.committed, self.last_index())

    # --- positions -----------------------------------------------------------------
    @property
    def meta(self) -> SnapshotMeta:
        return self.snapshot.meta

    def first_index(self) -> int:
        return self.meta.index + 1

    def last_index(self) -> int:
        return self.meta.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.meta.term

    def term(self, index: int) -> int:
        if index == self.meta.index:
            return self.meta.term
        if index < self.meta.index:
            raise Compacted(f"index {index} is compacted (snapshot at {self.meta.index})")
        if index > self.last_index():
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self.entries[index - self.meta.index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Would a candidate with this log tail be at least as up to date as us (5.4.1)?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int) -> tuple[Entry, ...]:
        """Entries [lo, hi); raises Compacted if lo was discarded."""
        if lo <= self.meta.index:
            raise Compacted(f"index {lo} is compacted (snapshot at {self.meta.index})")
        base = self.meta.index + 1
        return tuple(self.entries[lo - base : hi - base])

    # --- membership ----------------------------------------------------------------
    def conf(self) -> ConfState:
        if self.conf_indexes:
            return ConfState.decode(self.entries[self.conf_indexes[-1] - self.first_index()].data)
        return self.meta.conf

    def conf_at(self, index: int) -> ConfState:
        pos = bisect_right(self.conf_indexes, index)
        if pos:
            return ConfState.decode(
                self.entries[self.conf_indexes[pos - 1] - self.first_index()].data
            )
        return self.meta.conf

    def last_conf_index(self) -> int:
        return self.conf_indexes[-1] if self.conf_indexes else self.meta.index

    # --- mutation ------------------------------------------------------------------
    def append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Leader-side append of fresh entries that extend the log."""
        if entries:
            self._append_at(entries[0].index, list(entries))

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower-side AppendEntries: None if the log does not match at `index`."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(f"conflict at {conflict} below commit {self.committed}")
            self._append_at(conflict, list(entries[conflict - index - 1 :]))
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry that is new or differs in term; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def _append_at(self, index: int, entries: list[Entry]) -> None:
        keep = index - self.first_index()
        if keep < 0 or keep > len(self.entries):
            raise AssertionError(f"append at {index} outside the log [{self.first_index()}, ...]")
        del self.entries[keep:]
        self.conf_indexes = [i for i in self.conf_indexes if i < index]
        for expected, e in enumerate(entries, start=index):
            if e.index != expected:
                raise AssertionError(f"entry {e.index} is not contiguous (expected {expected})")
            self.entries.append(e)
            if e.type == EntryType.CONF:
                self.conf_indexes.append(e.index)
        self.stable = min(self.stable, index - 1)

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= `term`, with that term (fast backtracking).

        Lets the leader skip a whole term of mismatching entries per round trip
        instead of one entry (Raft thesis 5.3, etcd-io/raft's findConflictByTerm).
        """
        index = min(index, self.last_index())
        while index > self.meta.index:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        return self.meta.index, self.meta.term

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def unstable_entries(self) -> tuple[Entry, ...]:
        return tuple(self.entries[self.stable - self.meta.index :])

    def next_committed(self, limit: int) -> tuple[Entry, ...]:
        """Committed entries not yet handed to the state machine."""
        hi = min(self.committed, self.applied + limit)
        if hi <= self.applied:
            return ()
        return self.slice(self.applied + 1, hi + 1)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.snapshot = snapshot
        self.unstable_snapshot = snapshot
        self.entries = []
        self.conf_indexes = []
        self.committed = snapshot.meta.index
        self.applied = snapshot.meta.index
        self.stable = snapshot.meta.index

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Discard entries up to `index`, which the state machine captured in `data`."""
        if index <= self.meta.index:
            return self.snapshot
        if index > self.applied:
            raise Unavailable(f"cannot compact at {index}: only {self.applied} applied")
        meta = SnapshotMeta(index=index, term=self.term(index), conf=self.conf_at(index))
        del self.entries[: index - self.meta.index]
        self.conf_indexes = [i for i in self.conf_indexes if i > index]
        self.snapshot = Snapshot(meta, data)
        return self.snapshot
