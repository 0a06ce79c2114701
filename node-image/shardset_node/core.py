"""The node core: the Raft groups this node hosts, their storage, routing a request to
its group, and waiting for a group's answer.

The node learns its shards from the shard map. A new store starts from a
bootstrap map (written by `shardset local up` or handed over by the operator);
afterwards the map lives in the metadata group (group 0), replicated on up to
five nodes, so the store describes itself. Everything above this module (reads,
KV writes, admin actions, front ends) goes through its public methods.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import structlog

from shardset_node.config import META_GROUP, META_VOTERS, REQUEST_TIMEOUT, NodeConfig
from shardset_node.peers.transport import ClientHandler, Transport
from shardset_node.replication.group import LeadershipLost, ReplicaGroup, StateMachine
from shardset_node.replication.host import LoopFailed, RaftHost, StorageFull
from shardset_node.replication.machines import MetaMachine, ShardMachine, check_received_snapshot
from shardset_node.storage.diskspace import DiskSpace, disk_space
from shardset_node.storage.files import atomic_replace
from shardset_node.storage.kvengine import KvEngine
from shardset_node.storage.raftstore import NodeStorage
from shardset_node.tls import NodeTls
from shardset_proto import urls
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap
from shardset_proto.slots import slot_of
from shardset_proto.users import UserTable
from shardset_raft import (
    ConfState,
    Message,
    NotLeader,
    ProposalDropped,
    Raft,
    RaftConfig,
    RaftError,
    Role,
)

log = structlog.get_logger(__name__)

TOMBSTONES = "dropped-shards.json"
# Written when a data directory starts holding this node's state: "bootstrap" (created
# with the store) or "rejoin" (started empty in a store that already existed).
ORIGIN = "origin.json"
# Lease reads: a leader's lease ends election_tick - MAX_CLOCK_DRIFT_TICKS ticks after the
# heartbeat round a majority acknowledged was sent. The margin (2 of 10 ticks: 100 ms at
# the default 50 ms tick) covers followers' clocks running up to 20% faster than the
# leader's, plus the time between the lease check and the read; the host catches up
# ticks after an event-loop stall so a paused leader does not keep counting an old lease
# (docs/consistency.md).
MAX_CLOCK_DRIFT_TICKS = 2
# A host round still running after this many seconds is stuck (a sync that never returns):
# liveness fails, so the kubelet restarts the node. Far above any healthy round (a sync
# on a loaded disk takes milliseconds to a second or two).
STUCK_ROUND_S = 20.0
# How often the free space of the data file system is checked (seconds), and how much
# more than `min_free_bytes` must be free again before writes are taken again (so a
# node hovering at the threshold does not flap).
DISK_CHECK_INTERVAL = 1.0
LOW_SPACE_HYSTERESIS = 1.25


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.storage = NodeStorage(cfg.data_dir / "raft", fsync=cfg.fsync)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = KvEngine.open_checked(cfg.data_dir / "kv.sqlite3")
        self.host = RaftHost(self.storage.sync, tick_interval=cfg.tick_interval)
        self.meta = MetaMachine(cfg.bootstrap)
        self.transport: Transport | None = None
        self.tls: NodeTls | None = None  # its TLS material (status, metrics); set by start()
        # Shards whose replica was dropped here: never recreated from the bootstrap map.
        self.tombstones = self._load_tombstones()
        self.origin = "bootstrap"  # decided in start() (see ORIGIN)
        # Set while free space is below cfg.min_free_bytes (see watch_disk): why.
        self.low_space: str | None = None
        self._disk_watch: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------
    async def start(self, on_client: ClientHandler | None, tls: NodeTls | None = None) -> None:
        """Open the storage, host this node's groups and start the transport, which
        hands client connections (the binary wire protocol) to `on_client`; with `tls`
        the transport is mutual TLS and serves peers only (issue 16)."""
        await self.storage.open()
        self.tls = tls
        self.origin = self._origin()
        self._host_groups()
        self.transport = Transport(
            self.id,
            self.cfg.peer_host,
            self.cfg.peer_port,
            self._peer_addresses(self.meta.map),
            self.host.deliver,
            on_client=on_client,  # binary client protocol on the peer port (insecure)
            term_of=self._term_of,  # bounds how far a peer's message may move a term
            check_snapshot=check_received_snapshot,  # never store a damaged snapshot
            tls=tls,
        )
        # Nodes join and leave through the shard map: follow it.
        self.meta.on_change = self._map_changed
        await self.transport.start()
        await self.host.start()
        self._disk_watch = asyncio.create_task(self._watch_disk(), name="disk-watch")
        log.info(
            "node started",
            node=self.id,
            groups=sorted(self.host.groups),
            member=self.id in self.meta.map.nodes,
        )

    @property
    def users(self) -> UserTable:
        """The store's users as this node has applied them (the metadata group's table,
        swapped whole at each change): what the front ends authenticate requests against.
        Empty on a node that hosts no metadata group (it waits to be re-added)."""
        return self.meta.users

    def _term_of(self, group: int) -> int | None:
        g = self.host.groups.get(group)
        return None if g is None else g.raft.term

    def _host_groups(self) -> None:
        boot = self.cfg.bootstrap
        stored = set(self.storage.group_ids())
        if self.origin == "rejoin":
            # Only what was re-created here since: the operator re-adds the rest.
            for gid in sorted(stored - self.tombstones):
                if gid == META_GROUP:
                    self._add_group(META_GROUP, self.meta, ConfState())
                else:
                    self._add_group(gid, self._shard_machine(gid), ConfState())
        else:
            meta_voters = frozenset(sorted(boot.nodes)[:META_VOTERS])
            meta_learners = frozenset(boot.nodes) - meta_voters
            self._add_group(META_GROUP, self.meta, ConfState(meta_voters, meta_learners))
            # Shards placed here at bootstrap, plus replicas created later by the operator.
            shards = set(boot.shards_on(self.id)) | stored
            for shard in sorted(shards - {META_GROUP} - self.tombstones):
                voters = frozenset(boot.replicas.get(shard, ()))
                self._add_group(shard, self._shard_machine(shard), ConfState(voters))

    def _origin(self) -> str:
        """How this data directory began, decided once and kept (see ORIGIN)."""
        path = self.cfg.data_dir / ORIGIN
        fresh = not self.storage.group_ids()
        if path.exists():
            kept = str(json.loads(path.read_text())["origin"])
            # A "bootstrap" directory whose Raft log is gone (its raft/ lost or deleted,
            # origin.json left) in a store that exists: bootstrapping again would make
            # its empty log a voter's and could lose acknowledged writes. Rejoin instead.
            if not (kept == "bootstrap" and fresh and self.cfg.store_created):
                return kept
            log.warning(
                "raft log missing in an existing store: rejoining, not bootstrapping",
                node=self.id,
                data_dir=str(self.cfg.data_dir),
            )
            origin = "rejoin"
        else:
            origin = "rejoin" if fresh and self.cfg.store_created else "bootstrap"
            if origin == "rejoin":
                log.warning(
                    "empty data directory in an existing store: rejoining, not bootstrapping",
                    node=self.id,
                )
        atomic_replace(path, json.dumps({"origin": origin}).encode())
        return origin

    def _peer_addresses(self, m: ShardMap) -> dict[int, tuple[str, int]]:
        peers = {n: _hostport(a.peer) for n, a in m.nodes.items() if n != self.id}
        peers.update({n: _hostport(addr) for n, addr in self.cfg.peer_overrides})
        return peers

    def _map_changed(self, m: ShardMap) -> None:
        if self.transport is not None:
            self.transport.update_peers(self._peer_addresses(m))

    async def stop(self) -> None:
        if self._disk_watch is not None:
            self._disk_watch.cancel()
        await self.host.stop()
        if self.transport is not None:
            await self.transport.stop()
        for g in self.host.groups.values():
            g.fail_all(RaftError("node stopping"))
        await self.storage.close()
        self.engine.close()

    # --- free space ------------------------------------------------------------------
    async def _watch_disk(self) -> None:
        """Low free space (before the disk is actually full): client writes are refused
        with 507 (check_writable) and every leadership is handed to an up-to-date voter,
        while the cores still run and can send the transfer. Reads go on. A disk that
        fills anyway stalls the host (replication/host.py) until space returns."""
        while True:
            space = disk_space(self.cfg.data_dir)
            if space is not None:
                self._check_space(space)
            if self.low_space is not None and self.host.refusal() is None:
                self._hand_off_leaderships()
            await asyncio.sleep(DISK_CHECK_INTERVAL)

    def _check_space(self, space: DiskSpace) -> None:
        floor = self.cfg.min_free_bytes
        if self.low_space is None and space.free_bytes < floor:
            self.low_space = (
                f"{space.free_bytes} bytes free on the data file system, below the "
                f"{floor} the node keeps in reserve"
            )
            log.error("disk_space_low", node=self.id, free_bytes=space.free_bytes, floor=floor)
        elif self.low_space is not None and space.free_bytes >= floor * LOW_SPACE_HYSTERESIS:
            self.low_space = None
            log.info("disk_space_ok", node=self.id, free_bytes=space.free_bytes, floor=floor)

    def _hand_off_leaderships(self) -> None:
        for gid, g in sorted(self.host.groups.items()):
            raft = g.raft
            if raft.role != Role.LEADER or raft.lead_transferee:
                continue
            others = [(pr.match, -p) for p, pr in raft.progress.items() if p != self.id]
            voters = [(m, p) for m, p in others if -p in raft.conf.voters]
            if voters:
                to = -max(voters)[1]
                log.info("disk_space_low_transfer", node=self.id, group=gid, to=to)
                g.transfer_leadership(to).add_done_callback(_retrieved)

    def check_writable(self, shard: int) -> None:
        """Refuse a client write at once while free space is low (nothing is written)."""
        if self.low_space is not None:
            raise ApiError(
                507,
                "insufficient_storage",
                f"node {self.id}'s disk is full ({self.low_space}); nothing was written",
                shard=shard,
                node=self.id,
                retry_after=1,
            )

    # --- the replicas hosted here -------------------------------------------------------
    def host_meta(self) -> None:
        """Host the metadata group again, empty: it joins as a learner (add-node)."""
        self._add_group(META_GROUP, self.meta, ConfState())

    def host_shard(self, shard: int, voters: frozenset[int]) -> None:
        """Host a replica of `shard`: empty (`voters` empty: a learner to be), or one of
        the first replicas of a new shard. A shard dropped here before may come back."""
        self.tombstones.discard(shard)
        self._save_tombstones()
        self._add_group(shard, self._shard_machine(shard), ConfState(voters))

    def drop_shard(self, shard: int, g: ReplicaGroup) -> None:
        """Delete this node's replica `g` of `shard`; it is never recreated at start."""
        self.host.remove(shard)
        g.fail_all(RaftError(f"replica of shard {shard} dropped"))
        self.tombstones.add(shard)
        self._save_tombstones()
        self.engine.drop_shard(shard)

    def _shard_machine(self, shard: int) -> ShardMachine:
        return ShardMachine(self.engine, shard, self.cfg.data_dir / "tmp")

    def _load_tombstones(self) -> set[int]:
        path = self.cfg.data_dir / TOMBSTONES
        return set(json.loads(path.read_text())) if path.exists() else set()

    def _save_tombstones(self) -> None:
        # Durable before the drop goes on: this file alone stops the replica being
        # recreated from the bootstrap map at the next start.
        atomic_replace(self.cfg.data_dir / TOMBSTONES, json.dumps(sorted(self.tombstones)).encode())

    def _add_group(self, gid: int, machine: StateMachine, bootstrap: ConfState) -> None:
        gs = self.storage.group(gid)
        hard, snap, entries = gs.initial_state()
        if snap.meta.index > 0 or snap.data:
            machine.restore(snap)
        raft = Raft(
            RaftConfig(
                id=self.id,
                election_tick=self.cfg.election_tick,
                heartbeat_tick=1,
                check_quorum=True,
                lease_reads=True,
                max_clock_drift_ticks=MAX_CLOCK_DRIFT_TICKS,
                seed=gid * 7919 + self.id,
            ),
            hard_state=hard,
            snapshot=snap,
            entries=entries,
            bootstrap=bootstrap if self.id in bootstrap.members() else None,
        )
        self.host.add(
            ReplicaGroup(gid, raft, gs, machine, self._send, compact_every=self._compact_every())
        )

    def _compact_every(self) -> int:
        """Entries between snapshots, a little different on each node (+0, 1/8, 2/8 or
        3/8 by node id): replicas that compacted at the same index would all stall for
        it at the same moment, the leader with them; staggered, a majority keeps going."""
        base = self.cfg.compact_every
        return base + (self.id % 4) * base // 8

    def _send(self, to: int, gid: int, messages: Sequence[Message]) -> None:
        if self.transport is not None:
            self.transport.send(to, gid, messages)

    # --- routing ----------------------------------------------------------------------
    def group_for_key(self, key: bytes, path: str) -> ReplicaGroup:
        """The local replica of the shard owning `key`, or a redirect to its holders."""
        slot = slot_of(key)
        g = self.group(self.meta.map.shard_of_slot(slot), path)
        if isinstance(g.machine, ShardMachine) and g.machine.refuses(slot):
            raise moving(g.id, slot, self.meta.map.epoch)
        return g

    def group(self, shard: int, path: str) -> ReplicaGroup:
        """The local replica of `shard`; a redirect (or 404) when it is not hosted here."""
        self.check_alive()
        m = self.meta.map
        g = self.host.groups.get(shard)
        if g is None:
            holders = m.replicas.get(shard, ())
            if not holders:
                raise ApiError(404, "no_such_shard", f"shard {shard} does not exist", shard=shard)
            # Never to itself: a node that rejoined empty is still a holder in the map
            # until it is rebuilt, and a redirect to itself sent clients round in a loop.
            others = [n for n in holders if n != self.id]
            raise self.redirect(shard, others[0] if others else 0, path)
        return g

    def leader_group(self, shard: int, action: str) -> ReplicaGroup:
        """The replica of `shard` here for admin `action`, if this node leads it (else a
        redirect to the leader's admin API: its own port on a TLS node)."""
        g = self.group(shard, f"/v1/admin/{action}")
        if g.raft.role != Role.LEADER:
            raise self.redirect(shard, g.raft.leader, f"/v1/admin/{action}")
        return g

    def redirect(self, shard: int, leader: int, path: str) -> ApiError:
        """A 307 to `leader` for `path`, or a retryable 503 when no leader is known. An
        admin path, or none (an admin action's own proposal or wait), points at the
        leader's admin API (a port of its own on a TLS node), any other at its API."""
        if leader == 0 or leader not in self.meta.map.nodes:
            return ApiError(
                503,
                "no_leader",
                f"shard {shard} has no known leader yet; retry",
                retry_after=1,
                shard=shard,
                leader=None,
                epoch=self.meta.map.epoch,
            )
        address = self.meta.map.nodes[leader]
        url = address.admin_url if not path or path.startswith(urls.ADMIN) else address.api
        return ApiError(
            307,
            "not_leader",
            f"node {self.id} does not lead shard {shard}; node {leader} does",
            location=url + path,
            shard=shard,
            leader=leader,
            leader_url=url,
            epoch=self.meta.map.epoch,
        )

    async def wait(self, g: ReplicaGroup, fut: asyncio.Future[object], path: str) -> Any:
        """The result of a request to `g` (its type depends on the request), or the
        ApiError a client understands: a redirect, a retryable 503, a 504."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):  # cheaper than wait_for per request
                return await fut
        except NotLeader as e:
            raise self.redirect(g.id, e.leader or g.raft.leader, path) from None
        except (ProposalDropped, LeadershipLost) as e:
            raise ApiError(503, "retry", str(e), retry_after=1, shard=g.id) from None
        except LoopFailed as e:
            raise self.failed(e.cause) from None
        except StorageFull as e:
            raise ApiError(
                507, "insufficient_storage", str(e), shard=g.id, node=self.id, retry_after=1
            ) from None
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"shard {g.id} did not answer within {REQUEST_TIMEOUT}s; the "
                "write may or may not have been applied (retry with the same Idempotency-Key)",
                shard=g.id,
            ) from None

    async def propose(self, g: ReplicaGroup, data: bytes) -> object:
        """Propose `data` to `g` (an admin command) and return what applying it gave."""
        _, result = await self.wait(g, g.propose(data), "")
        return result

    # --- health -----------------------------------------------------------------------
    def failed(self, cause: BaseException) -> ApiError:
        """The answer of a node whose Raft loop stopped (it is about to exit)."""
        return ApiError(
            503,
            "node_failed",
            f"node {self.id} stopped serving: {LoopFailed(cause)}; it restarts, ask another "
            "replica",
            node=self.id,
            retry_after=1,
        )

    def check_alive(self) -> None:
        """Raise `failed` once the Raft loop has stopped: nothing this node holds may be
        served any more (its roles and applied state no longer move)."""
        if self.host.failure is not None:
            raise self.failed(self.host.failure)

    def liveness_problems(self) -> list[str]:
        """Why the process should be restarted (/healthz), if it should."""
        if self.host.failure is not None:
            return [str(LoopFailed(self.host.failure))]
        if self.engine.malformed is not None:  # storage/enginecheck.py: restart to repair
            return [f"the engine file is malformed ({self.engine.malformed})"]
        stuck = self.host.stuck_for()
        if stuck > STUCK_ROUND_S:
            return [f"the Raft loop has been stuck in one round for {stuck:.0f}s"]
        return []

    def readiness_problems(self) -> list[str]:
        alive = self.liveness_problems()
        if alive:
            return alive
        problems = []
        if self.low_space is not None:
            problems.append(f"disk full: {self.low_space}; writes are refused")
        stall = self.host.disk_stall
        if stall is not None:
            problems.append(f"disk full: {stall.reason}; writes are refused until space returns")
        if self.id not in self.meta.map.nodes:
            return [
                *problems,
                f"node {self.id} is not yet a member of the store (add-node adds it)",
            ]
        if META_GROUP not in self.host.groups:
            return [
                *problems,
                f"node {self.id} lost its data and waits to be re-added by the operator",
            ]
        return problems + [
            f"group {gid} has no known leader"
            for gid, g in sorted(self.host.groups.items())
            if g.raft.leader == 0
        ]


def moving(shard: int, slot: int, epoch: int) -> ApiError:
    """The retryable refusal of a request for a slot that is moving off `shard`."""
    return ApiError(
        409,
        "slot_moved",
        f"slot {slot} is moving or has moved off shard {shard}; refresh the shard map and retry",
        shard=shard,
        epoch=epoch,
        retry_after=1,
    )


def _retrieved(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()  # a refused transfer is tried again at the next check


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)
