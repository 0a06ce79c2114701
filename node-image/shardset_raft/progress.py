"""The leader's view of each follower's log: what matched, what to send next.

States follow etcd-io/raft's tracker: PROBE sends one append per heartbeat until
the follower's position is found; REPLICATE pipelines up to `max_inflight`
appends optimistically; SNAPSHOT waits for an InstallSnapshot to land.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


@dataclass
class Progress:
    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_elapsed: int = 0
    stall_ticks: int = 0  # ticks since `match` last moved while entries were outstanding
    recent_active: bool = False
    recovering: bool = False  # its acks say it recovers a lost tail: they do not count
    inflight: deque[int] = field(default_factory=deque)  # last index of each append in flight

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.stall_ticks = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to `index`; True if `match` moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.stall_ticks = 0
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the append after `rejected`; False if it is stale.

        A follower whose log ends (`hint`) below what it acknowledged (`match`) lost
        synced entries, e.g. a corrupt WAL tail cut at restart: match drops to what it
        has, or the leader would never resend them. Lowering match is always safe (it
        only makes commitment more cautious; the commit index never goes back), so a
        reordered old rejection that looks the same costs a probe, nothing more.
        """
        lost = hint < self.match
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match and not lost:
                return False
            self.match = min(self.match, hint)
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.match = min(self.match, hint)
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last: int) -> None:
        """Bookkeeping after an append carrying entries up to `last` was sent."""
        if self.state == ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight
