"""One Raft group on a node: the core, its storage, its state machine, and the
clients waiting on it.

The core refuses input between ready() and advance() (see shardset_raft.raft),
while the host awaits the disk. So requests from clients are queued here and
handed to the core by the host loop at a safe point; their futures resolve when
the entry is applied (writes) or the read index is applied (reads).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from shardset_node.storage.diskspace import is_disk_full
from shardset_raft import (
    ConfChange,
    Entry,
    EntryType,
    Message,
    NotLeader,
    Raft,
    RaftError,
    Ready,
    Role,
    Snapshot,
)

Send = Callable[[int, int, Sequence[Message]], None]  # (to_node, group, messages)

log = structlog.get_logger(__name__)
# A client request run by the host loop; given the request's future, it returns the result,
# or _WAITING when it has registered the future to be resolved later (apply, read index).
Action = Callable[["asyncio.Future[object]"], object]
_WAITING = object()


class StateMachine(Protocol):
    def apply(self, entries: Sequence[Entry]) -> list[object]:
        """Apply committed entries in order; one result per entry."""
        ...

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole state by a snapshot received from the leader."""
        ...

    def snapshot(self) -> bytes:
        """The state at the last applied index, for compaction and laggards."""
        ...


@runtime_checkable
class ExportsFromThread(Protocol):
    def export_state(self) -> tuple[int, bytes]:
        """From any thread: the whole state, and the applied index it is at."""
        ...


class GroupStorage(Protocol):
    def stage(self, rd: Ready) -> None:
        """Buffer what `rd` asks to persist; the host's sync() makes it durable."""
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None: ...


class LeadershipLost(RaftError):
    """The entry a client waited for was overwritten by a new leader; retry."""


class ApplyFailed(Exception):
    """A committed entry this replica cannot apply: the replica must stop, never skip
    it (the other replicas applied it; skipping would make this one diverge)."""

    def __init__(self, group: int, index: int, cause: BaseException) -> None:
        what = "the metadata group" if group == 0 else f"shard {group}"
        reason = str(cause) or type(cause).__name__
        super().__init__(
            f"{what}: committed entry {index} cannot be applied ({reason}); this replica "
            "stops rather than skip it (it would diverge from the others): rebuild it "
            "from its peers"
        )
        self.group = group
        self.index = index
        self.cause = cause


@dataclass
class _Waiter:
    term: int
    future: asyncio.Future[object]


class ReplicaGroup:
    def __init__(
        self,
        group_id: int,
        raft: Raft,
        storage: GroupStorage,
        machine: StateMachine,
        send: Send,
        *,
        compact_every: int = 10_000,
    ) -> None:
        self.id = group_id
        self.raft = raft
        self.storage = storage
        self.machine = machine
        self.send = send
        self.compact_every = compact_every
        self._requests: list[tuple[Action, asyncio.Future[object]]] = []
        self._writes: dict[int, _Waiter] = {}  # log index -> waiter
        self._reads: dict[int, asyncio.Future[object]] = {}  # read request id -> future
        self._read_waits: list[tuple[int, asyncio.Future[object]]] = []  # (index, future)
        self._read_ids = itertools.count(1)
        self.wake: Callable[[], None] = lambda: None
        # Set by the host: why new requests must be refused now (a full disk, a dead
        # loop), if they must; they are then answered at once, not left to time out.
        self.refusal: Callable[[], Exception | None] = lambda: None
        self._exporting = False  # a snapshot export is running in a thread
        self._export_task: asyncio.Future[None] | None = None  # kept: tasks are weakly held

    # --- requests from clients (any time) ---------------------------------------
    def propose(self, data: bytes) -> asyncio.Future[object]:
        """Resolves with the state machine's result once the entry is applied here."""
        return self._queue(lambda fut: self._propose_now(data, fut))

    def read_index(self, use_lease: bool = False) -> asyncio.Future[object]:
        """Resolves with a linearizable read index once it is applied here: confirmed
        by a heartbeat round, or (use_lease) from the leader's lease while it is valid."""
        return self._queue(lambda fut: self._read_now(use_lease, fut))

    def wait_applied(self, index: int) -> asyncio.Future[object]:
        """Resolves with the applied index once this replica has applied `index`."""
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        refused = self.refusal()
        if self.raft.applied >= index:
            fut.set_result(self.raft.applied)
        elif refused is not None:
            fut.set_exception(refused)
        else:
            self._read_waits.append((index, fut))
        return fut

    def conf_change(self, change: ConfChange) -> asyncio.Future[object]:
        return self._queue(lambda fut: self._conf_now(change, fut))

    def transfer_leadership(self, to: int) -> asyncio.Future[object]:
        return self._queue(lambda fut: self.raft.transfer_leadership(to))

    def _queue(self, action: Action) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        refused = self.refusal()
        if refused is not None:
            fut.set_exception(refused)
            return fut
        self._requests.append((action, fut))
        self.wake()
        return fut

    # --- the host loop, at a safe point ------------------------------------------
    def take_requests(self) -> None:
        requests, self._requests = self._requests, []
        for action, fut in requests:
            try:
                outcome = action(fut)
            except RaftError as e:
                if not fut.done():
                    fut.set_exception(e)
                continue
            if outcome is not _WAITING and not fut.done():
                fut.set_result(outcome)

    # The client's own future waits on the entry or read index (a caller that gave up
    # leaves it done, and it is skipped when the answer comes).
    def _propose_now(self, data: bytes, fut: asyncio.Future[object]) -> object:
        index = self.raft.propose(data)
        self._writes[index] = _Waiter(self.raft.term, fut)
        return _WAITING

    def _conf_now(self, change: ConfChange, fut: asyncio.Future[object]) -> object:
        index = self.raft.propose_conf_change(change)
        if index is None:
            return None
        self._writes[index] = _Waiter(self.raft.term, fut)
        return _WAITING

    def _read_now(self, use_lease: bool, fut: asyncio.Future[object]) -> object:
        rid = next(self._read_ids)
        self._reads[rid] = fut
        self.raft.read_index(rid, use_lease=use_lease)
        return _WAITING

    def send_messages(self, rd: Ready) -> None:
        for m in rd.messages:
            self.send(m.to, self.id, (m,))

    def finish(self, rd: Ready, *, messages_sent: bool = False) -> None:
        """After the host persisted `rd`: send (unless the host sent them already, see
        RaftHost._may_send_before_sync), apply, answer, advance."""
        if not messages_sent:
            self.send_messages(rd)
        if rd.snapshot is not None:
            self.machine.restore(rd.snapshot)
        if rd.committed_entries:
            self._apply(rd.committed_entries)
        for rs in rd.read_states:
            fut = self._reads.pop(rs.request, None)
            if fut is not None:
                self._read_waits.append((rs.index, fut))
        self.raft.advance(rd)
        self._release_reads()
        if rd.soft_state is not None and rd.soft_state.role != Role.LEADER:
            self._fail_reads(NotLeader(rd.soft_state.leader))
        self._maybe_compact()

    def _apply(self, entries: Sequence[Entry]) -> None:
        results = self._apply_or_stop(entries)
        for e, result in zip(entries, results, strict=True):
            waiter = self._writes.pop(e.index, None)
            if waiter is None or waiter.future.done():
                continue
            if e.term != waiter.term:
                waiter.future.set_exception(LeadershipLost(f"entry {e.index} was replaced"))
            elif e.type == EntryType.NORMAL or e.type == EntryType.CONF:
                waiter.future.set_result((e.index, result))

    def _apply_or_stop(self, entries: Sequence[Entry]) -> list[object]:
        """The machine's results; a full disk propagates as it is (the host retries the
        round), anything else is ApplyFailed naming the entry (the host stops)."""
        try:
            return self.machine.apply(entries)
        except Exception as exc:
            if is_disk_full(exc):
                raise
            index = getattr(exc, "index", None)
            raise ApplyFailed(
                self.id, index if isinstance(index, int) else entries[0].index, exc
            ) from exc

    def _release_reads(self) -> None:
        applied = self.raft.applied
        still = []
        for index, fut in self._read_waits:
            if index <= applied:
                if not fut.done():
                    fut.set_result(index)
            elif not fut.done():  # a reader that gave up waiting is forgotten
                still.append((index, fut))
        self._read_waits = still

    def _fail_reads(self, error: RaftError) -> None:
        # Pending ReadIndex requests die with the leadership (the core drops them).
        for fut in self._reads.values():
            if not fut.done():
                fut.set_exception(error)
        self._reads.clear()

    def _maybe_compact(self) -> None:
        raft = self.raft
        if self._exporting or raft.applied - raft.log.meta.index < self.compact_every:
            return
        if isinstance(self.machine, ExportsFromThread):
            # A big shard's export takes long enough to stall the event loop past an
            # election timeout (every replica at about the same moment): export in a
            # thread, compact when it is done, at a safe point (the request queue).
            self._exporting = True
            self._export_task = asyncio.ensure_future(self._export(self.machine))
            return
        snap = raft.compact(raft.applied, self.machine.snapshot())
        self._save_snapshot(snap)

    async def _export(self, machine: ExportsFromThread) -> None:
        try:
            index, data = await asyncio.to_thread(machine.export_state)
        except Exception:
            log.exception(
                "snapshot export failed; retried at the next compaction point", group=self.id
            )
            self._exporting = False
            return
        self._queue(lambda _: self._compact_at(index, data)).add_done_callback(
            self._compaction_refused
        )

    def _compaction_refused(self, fut: asyncio.Future[object]) -> None:
        # Refused (a full disk, a dead loop) or failed with every request: the next
        # compaction point exports again.
        if not fut.cancelled() and fut.exception() is not None:
            self._exporting = False

    def _compact_at(self, index: int, data: bytes) -> None:
        """Between rounds: compact at the exported state's index. The log may have moved
        on meanwhile (more applied: fine; a snapshot installed past it: nothing to do)."""
        self._exporting = False
        if index > self.raft.log.meta.index:
            self._save_snapshot(self.raft.compact(index, data))

    def _save_snapshot(self, snap: Snapshot) -> None:
        """Record a local snapshot. A full disk only skips it: the log stays whole on
        disk (the core compacted in memory only), and the next compaction point tries
        again."""
        try:
            self.storage.save_snapshot(snap)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.warning(
                "snapshot_skipped_disk_full", group=self.id, index=snap.meta.index, error=str(exc)
            )

    def fail_all(self, error: Exception) -> None:
        requests, self._requests = self._requests, []
        for _, fut in requests:
            if not fut.done():
                fut.set_exception(error)
        for waiter in self._writes.values():
            if not waiter.future.done():
                waiter.future.set_exception(error)
        for fut in self._reads.values():
            if not fut.done():
                fut.set_exception(error)
        for _, fut in self._read_waits:
            if not fut.done():
                fut.set_exception(error)
        self._writes.clear()
        self._reads.clear()
        self._read_waits.clear()
