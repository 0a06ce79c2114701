"""The consistency checker (issue 15): the replicas of a shard compare their state.

Modelled on CockroachDB's and TiKV's: the leader proposes a ComputeChecksum entry
through the shard's Raft log, so every replica digests its state when it applies that
entry, at the same applied index (ShardMachine._consistency_check; the digest is
computed off the event loop from a read transaction pinned at that index). The leader
then collects every voter's digest (`replica-digest`) and compares them: the replicas
outvoted by a majority are told to rebuild (`rebuild-replica`), and the result is kept
for status (`consistency_check` of the group), metrics and the operator's Degraded
condition. Without a majority nothing is rebuilt, only reported.

Rate: each shard is checked every `interval` seconds (default 10 minutes) by its leader;
one digest at a time per node. The cost is measured in bench/ (docs/integrity.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time

import structlog

from shardset_node.config import META_GROUP
from shardset_node.core import Node
from shardset_node.peers.client import PeerClient
from shardset_node.replication.machines import ShardMachine
from shardset_proto.admin import RebuildReplica, ReplicaDigest
from shardset_proto.commands import ComputeChecksum, encode_check
from shardset_proto.errors import ApiError
from shardset_proto.status import ConsistencyCheckView
from shardset_raft import RaftError, Role

log = structlog.get_logger(__name__)

CORRUPT = "corrupt"  # the digest of a replica whose rows failed their checksums
DIGEST_TIMEOUT = 30.0  # seconds a voter may take to answer with its digest
POLL = 5.0  # seconds between looks for a shard due for a check
# After a mismatch, the shard is checked again this soon (if periodic checks are on):
# a rebuilt replica then clears the Degraded condition without waiting a full interval.
RECHECK = 30.0


def judge(index: int, voters: list[int], digests: dict[int, str | None]) -> ConsistencyCheckView:
    """Compare the voters' digests: the majority's is the shard's state; a replica with
    another digest, or a corrupt one, is mismatched. No answer (None) counts for nothing."""
    counts = collections.Counter(d for d in digests.values() if d not in (None, CORRUPT))
    top = counts.most_common(1)
    majority = top[0][0] if top and top[0][1] > len(voters) // 2 else None
    if majority is None:
        mismatched = [n for n, d in digests.items() if d == CORRUPT]
        decided = len(counts) <= 1  # only corrupt replicas disagree, or nothing to compare
    else:
        mismatched = [n for n, d in digests.items() if d is not None and d != majority]
        decided = True
    ok = not mismatched and len(counts) <= 1
    return ConsistencyCheckView(
        index=index,
        at=time.time(),
        ok=ok,
        digests=dict(sorted(digests.items())),
        mismatched=sorted(mismatched),
        decided=decided,
    )


class ConsistencyChecker:
    def __init__(
        self, node: Node, peers: PeerClient, interval: float = 600.0, poll: float = POLL
    ) -> None:
        self.node = node
        self.peers = peers
        self.interval = interval
        self.poll = min(poll, interval) if interval > 0 else poll
        # (shard, replica) -> checks that found that replica mismatched
        self.mismatches: collections.Counter[tuple[int, int]] = collections.Counter()
        self.checks: collections.Counter[int] = collections.Counter()  # shard -> checks run
        self._due: dict[int, float] = {}  # shard -> monotonic time its next check is due
        self._ids = itertools.count(time.time_ns() >> 10)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="consistency-checker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            for shard in self._due_shards():
                try:
                    await self.check(shard)
                except (ApiError, RaftError) as e:
                    log.warning("consistency_check_failed", shard=shard, error=str(e))

    def _due_shards(self) -> list[int]:
        now = time.monotonic()
        due = []
        for shard, g in list(self.node.host.groups.items()):
            if shard == META_GROUP or g.raft.role != Role.LEADER:
                continue
            # A shard newly led here waits one interval (no burst after each election).
            if now >= self._due.setdefault(shard, now + self.interval):
                due.append(shard)
        return due

    async def check(self, shard: int) -> ConsistencyCheckView:
        """On the shard's leader: check the shard now; the outvoted replicas rebuild."""
        g = self.node.leader_group(shard, "check-consistency")
        await self._voters_can_apply(shard, sorted(g.raft.conf.voters))
        machine = g.machine
        if not isinstance(machine, ShardMachine):
            raise ApiError(400, "not_a_shard", f"group {shard} holds no key-value state")
        self._due[shard] = time.monotonic() + self.interval
        entry = encode_check(ComputeChecksum(next(self._ids)))
        index, _ = await self.node.wait(g, g.propose(entry), "")
        voters = sorted(g.raft.conf.voters)
        answers = await asyncio.gather(*(self._digest(n, shard, index) for n in voters))
        view = judge(index, voters, dict(zip(voters, answers, strict=True)))
        machine.last_check = view
        self.checks[shard] += 1
        for bad in view.mismatched:
            self.mismatches[(shard, bad)] += 1
        if view.ok:
            log.info("consistency_check_ok", shard=shard, index=index, voters=voters)
        else:
            log.error("consistency_mismatch", shard=shard, index=index,
                      mismatched=view.mismatched, decided=view.decided,
                      digests=view.digests)  # fmt: skip
            self._due[shard] = time.monotonic() + min(self.interval, RECHECK)
            if view.decided:
                await self._rebuild(shard, index, view.mismatched)
        return view

    async def _voters_can_apply(self, shard: int, voters: list[int]) -> None:
        """Refuse to propose a check unless every other voter knows `replica-digest`.

        A node from before the checker cannot decode a ComputeChecksum entry: applying
        one would stop it (an entry it cannot apply), so during a rolling upgrade, or
        while a voter cannot be asked, the shard is not checked. A node that knows the
        action answers a digest asked for at index 1 (never a check entry) with
        `no_such_check` (or `replica_corrupt`); an old node answers `unknown_action`.
        """
        others = [n for n in voters if n != self.node.id]
        answers = await asyncio.gather(*(self._knows_checks(n, shard) for n in others))
        unable = [n for n, ok in zip(others, answers, strict=True) if not ok]
        if unable:
            raise ApiError(
                409,
                "check_unsupported",
                f"shard {shard} not checked: voters {unable} cannot be asked or do not "
                "know consistency checks (a node older than the checker, or unreachable)",
                shard=shard,
                voters=unable,
            )

    async def _knows_checks(self, node: int, shard: int) -> bool:
        try:
            await self.peers.call(node, ReplicaDigest(shard=shard, index=1), timeout=5.0)
        except ApiError as e:
            # A corrupt replica knows checks too: it answers so to every digest.
            return e.code in ("no_such_check", "replica_corrupt")
        return True  # entry 1 was a check after all: the node knows them

    async def _digest(self, node: int, shard: int, index: int) -> str | None:
        try:
            answer = await self.peers.call(
                node, ReplicaDigest(shard=shard, index=index), timeout=DIGEST_TIMEOUT
            )
        except ApiError as e:
            if e.code == "replica_corrupt":
                return CORRUPT
            log.warning("consistency_digest_missing", shard=shard, replica=node, error=str(e))
            return None
        digest = answer.get("digest")
        return digest if isinstance(digest, str) else None

    async def _rebuild(self, shard: int, index: int, replicas: list[int]) -> None:
        for replica in replicas:
            why = f"outvoted by the consistency check at index {index}"
            try:
                await self.peers.call(replica, RebuildReplica(shard=shard, reason=why))
            except ApiError as e:
                log.warning("rebuild_request_failed", shard=shard, replica=replica, error=str(e))
