"""A Shardset node: the Raft groups it hosts, its storage, transport and API.

The node learns its shards from the shard map. A new store starts from a
bootstrap map (written by `shardset local up` or handed over by the operator);
afterwards the map lives in the metadata group (group 0), replicated on up to
five nodes, so the store describes itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from shardset_node.commands import MAX_VALUE_BYTES, Cas, Delete, Put, encode_command
from shardset_node.consistency import ReadPolicy, policy_from_body
from shardset_node.errors import ApiError
from shardset_node.group import LeadershipLost, ReplicaGroup
from shardset_node.host import RaftHost
from shardset_node.kvengine import KvEngine
from shardset_node.machines import MetaMachine, ShardMachine, system_command
from shardset_node.metrics import NodeMetrics
from shardset_node.raftstore import NodeStorage
from shardset_node.reads import ReadPath
from shardset_node.transport import Transport
from shardset_node.wire import WireServer
from shardset_proto.placement import SlotRange
from shardset_proto.shardmap import NodeAddress, ShardMap, split_range
from shardset_proto.slots import slot_of
from shardset_raft import (
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
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

META_GROUP = 0
META_VOTERS = 5
TOMBSTONES = "dropped-shards.json"
# Written when a data directory starts holding this node's state: "bootstrap" (created
# with the store) or "rejoin" (started empty in a store that already existed).
ORIGIN = "origin.json"
REQUEST_TIMEOUT = 5.0
# Lease reads: a leader's lease ends election_tick - MAX_CLOCK_DRIFT_TICKS ticks after the
# heartbeat round a majority acknowledged was sent. The margin (2 of 10 ticks: 100 ms at
# the default 50 ms tick) covers followers' clocks running up to 20% faster than the
# leader's, plus the time between the lease check and the read; the host catches up
# ticks after an event-loop stall so a paused leader does not keep counting an old lease
# (docs/consistency.md).
MAX_CLOCK_DRIFT_TICKS = 2


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    data_dir: Path
    peer_host: str
    peer_port: int
    bootstrap: ShardMap
    tick_interval: float = 0.05
    election_tick: int = 10
    fsync: bool = True
    read_policy: ReadPolicy = field(default_factory=ReadPolicy)  # for reads naming no mode
    compact_every: int = 10_000  # applied entries between snapshots of a group
    # Test hook: reach peer N at another address (a fault-injecting proxy).
    peer_overrides: tuple[tuple[int, str], ...] = ()
    # The store existed before this node's data directory did (its volume was lost):
    # the node must not bootstrap its groups from the bootstrap map, whose membership
    # would make an empty log a voter, and waits to be re-added instead.
    store_created: bool = False


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.id = cfg.node_id
        self.storage = NodeStorage(cfg.data_dir / "raft", fsync=cfg.fsync)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = KvEngine(cfg.data_dir / "kv.sqlite3")
        self.host = RaftHost(self.storage.sync, tick_interval=cfg.tick_interval)
        self.meta = MetaMachine(cfg.bootstrap)
        self.transport: Transport | None = None
        self.reads = ReadPath(self, cfg.read_policy)
        self.wire = WireServer(self, max_value_bytes=MAX_VALUE_BYTES)
        self._http: aiohttp.ClientSession | None = None  # to peers' APIs, opened on first use
        self.metrics = NodeMetrics(self)
        # Shards whose replica was dropped here: never recreated from the bootstrap map.
        self.tombstones = self._load_tombstones()
        self.origin = "bootstrap"  # decided in start() (see ORIGIN)

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.storage.open()
        self.origin = self._origin()
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
        self.transport = Transport(
            self.id,
            self.cfg.peer_host,
            self.cfg.peer_port,
            self._peer_addresses(self.meta.map),
            self.host.deliver,
            on_client=self.wire.serve,  # binary client protocol on the peer port
        )
        # Nodes join and leave through the shard map: follow it.
        self.meta.on_change = self._map_changed
        await self.transport.start()
        await self.host.start()
        log.info(
            "node started",
            node=self.id,
            groups=sorted(self.host.groups),
            member=self.id in self.meta.map.nodes,
        )

    def _origin(self) -> str:
        """How this data directory began, decided once and kept (see ORIGIN)."""
        path = self.cfg.data_dir / ORIGIN
        if path.exists():
            return str(json.loads(path.read_text())["origin"])
        fresh = not self.storage.group_ids()
        origin = "rejoin" if fresh and self.cfg.store_created else "bootstrap"
        if origin == "rejoin":
            log.warning(
                "empty data directory in an existing store: rejoining, not bootstrapping",
                node=self.id,
            )
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"origin": origin}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return origin

    def _peer_addresses(self, m: ShardMap) -> dict[int, tuple[str, int]]:
        peers = {n: _hostport(a.peer) for n, a in m.nodes.items() if n != self.id}
        peers.update({n: _hostport(addr) for n, addr in self.cfg.peer_overrides})
        return peers

    def _map_changed(self, m: ShardMap) -> None:
        if self.transport is not None:
            self.transport.update_peers(self._peer_addresses(m))

    async def stop(self) -> None:
        await self.reads.close()
        if self._http is not None:
            await self._http.close()
        await self.host.stop()
        if self.transport is not None:
            await self.transport.stop()
        for g in self.host.groups.values():
            g.fail_all(RaftError("node stopping"))
        await self.storage.close()
        self.engine.close()

    def _shard_machine(self, shard: int) -> ShardMachine:
        return ShardMachine(self.engine, shard, self.cfg.data_dir / "tmp")

    def _load_tombstones(self) -> set[int]:
        path = self.cfg.data_dir / TOMBSTONES
        return set(json.loads(path.read_text())) if path.exists() else set()

    def _save_tombstones(self) -> None:
        path = self.cfg.data_dir / TOMBSTONES
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.tombstones)))
        os.replace(tmp, path)

    def _add_group(self, gid: int, machine: Any, bootstrap: ConfState) -> None:
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
    def _group_for_key(self, key: bytes, path: str) -> ReplicaGroup:
        slot = slot_of(key)
        g = self._group(self.meta.map.shard_of_slot(slot), path)
        if isinstance(g.machine, ShardMachine) and g.machine.refuses(slot):
            raise _moving(g.id, slot, self.meta.map.epoch)
        return g

    def _group(self, shard: int, path: str) -> ReplicaGroup:
        m = self.meta.map
        g = self.host.groups.get(shard)
        if g is None:
            holders = m.replicas.get(shard, ())
            if not holders:
                raise ApiError(404, "no_such_shard", f"shard {shard} does not exist", shard=shard)
            raise self._redirect(shard, holders[0], path)
        return g

    def _redirect(self, shard: int, leader: int, path: str) -> ApiError:
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
        url = self.meta.map.nodes[leader].api
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

    async def _await(self, g: ReplicaGroup, fut: asyncio.Future[object], path: str) -> Any:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):  # cheaper than wait_for per request
                return await fut
        except NotLeader as e:
            raise self._redirect(g.id, e.leader or g.raft.leader, path) from None
        except (ProposalDropped, LeadershipLost) as e:
            raise ApiError(503, "retry", str(e), retry_after=1, shard=g.id) from None
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"shard {g.id} did not answer within {REQUEST_TIMEOUT}s; the "
                "write may or may not have been applied (retry with the same Idempotency-Key)",
                shard=g.id,
            ) from None

    # --- key-value operations ---------------------------------------------------------
    async def _write(self, key: bytes, command: bytes, path: str) -> dict[str, Any]:
        g = self._group_for_key(key, path)
        if g.raft.role != Role.LEADER:
            raise self._redirect(g.id, g.raft.leader, path)
        index, result = await self._await(g, g.propose(command), path)
        if isinstance(result, dict) and result.get("error") == "slot_moved":
            raise _moving(g.id, slot_of(key), self.meta.map.epoch)
        body = {"shard": g.id, "index": index, "epoch": self.meta.map.epoch, "replica": self.id}
        if isinstance(result, dict):
            body.update({k: _jsonable(v) for k, v in result.items()})
        return body

    async def put(self, key: bytes, value: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        return await self._write(key, encode_command(Put(key, value, idem)), path)

    async def delete(self, key: bytes, idem: bytes | None, path: str) -> dict[str, Any]:
        return await self._write(key, encode_command(Delete(key, idem)), path)

    async def cas(
        self, key: bytes, expected: bytes | None, value: bytes | None, idem: bytes | None, path: str
    ) -> dict[str, Any]:
        return await self._write(key, encode_command(Cas(key, expected, value, idem)), path)

    async def get(
        self, key: bytes, mode: str | None, staleness_ms: int | None, token: int, path: str
    ) -> dict[str, Any]:
        """Read `key` under a consistency mode (None: the node's default); see reads.py."""
        return await self.reads.get(key, mode, staleness_ms, token, path)

    async def scan(
        self,
        shard: int,
        start: str,
        end: str | None,
        limit: int,
        path: str,
        *,
        mode: str | None = None,
        staleness_ms: int | None = None,
        token: int = 0,
    ) -> dict[str, Any]:
        return await self.reads.scan(shard, start, end, limit, mode, staleness_ms, token, path)

    # --- views ------------------------------------------------------------------------
    def shardmap_view(self) -> dict[str, Any]:
        m = self.meta.map
        leaders = {str(gid): g.raft.leader for gid, g in self.host.groups.items() if gid}
        return {
            "epoch": m.epoch,
            "slots": [[r.start, r.end, r.shard] for r in m.slots],
            "replicas": {str(s): list(h) for s, h in m.replicas.items()},
            "nodes": {str(n): {"peer": a.peer, "api": a.api} for n, a in m.nodes.items()},
            "leaders": leaders,
        }

    def status(self) -> dict[str, Any]:
        groups = {}
        for gid, g in sorted(self.host.groups.items()):
            r = g.raft
            entry: dict[str, Any] = {
                "role": r.role.name.lower(),
                "term": r.term,
                "leader": r.leader,
                "commit": r.committed,
                "applied": r.applied,
                "last_index": r.log.last_index(),
                "voters": sorted(r.conf.voters),
                "learners": sorted(r.conf.learners),
            }
            if r.role == Role.LEADER:
                last = r.log.last_index()
                entry["followers"] = {
                    str(p): {
                        "match": pr.match,
                        "lag": last - pr.match,
                        "state": pr.state.name.lower(),
                    }
                    for p, pr in r.progress.items()
                    if p != self.id
                }
            groups["meta" if gid == META_GROUP else str(gid)] = entry
        return {
            "node": self.id,
            "origin": self.origin,
            "epoch": self.meta.map.epoch,
            "consistency": self.reads.policy.view(),
            "groups": groups,
        }

    def readiness_problems(self) -> list[str]:
        if self.id not in self.meta.map.nodes:
            return [f"node {self.id} is not yet a member of the store (add-node adds it)"]
        if META_GROUP not in self.host.groups:
            return [f"node {self.id} lost its data and waits to be re-added by the operator"]
        return [
            f"group {gid} has no known leader"
            for gid, g in sorted(self.host.groups.items())
            if g.raft.leader == 0
        ]

    async def admin(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Idempotent operations for the operator; each is safe to retry."""
        handler = {
            "transfer-leader": self._admin_transfer,
            "create-replica": self._admin_create,
            "add-learner": self._admin_add_learner,
            "promote": self._admin_promote,
            "remove-replica": self._admin_remove,
            "drop-replica": self._admin_drop,
            "record-replicas": self._admin_record,
            "split-shard": self._admin_split,
            "system": self._admin_system,
            "map-split": self._admin_map_split,
            "consistency": self._admin_consistency,
            "add-node": self._admin_add_node,
            "recover-shard": self._admin_recover,
            "map-recover": self._admin_map_recover,
            "remove-node": self._admin_remove_node,
            "read-index": self._admin_read_index,
        }.get(action)
        if handler is None:
            raise ApiError(404, "unknown_action", f"unknown admin action {action!r}")
        return await handler(body)

    async def _admin_transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        shard, to = _int_field(body, "shard"), _int_field(body, "to")
        g = self._leader_group(shard, "transfer-leader")
        if g.raft.leader == to:
            return {"shard": shard, "leader": to, "changed": False}
        await self._await(g, g.transfer_leadership(to), "")
        return {"shard": shard, "leader": to, "changed": True}

    async def _admin_consistency(self, body: dict[str, Any]) -> dict[str, Any]:
        """Change the default read consistency of this node, live."""
        policy = policy_from_body(body)
        old, self.reads.policy = self.reads.policy, policy
        log.info("read consistency changed", node=self.id, old=old.view(), new=policy.view())
        return policy.view()

    async def _admin_read_index(self, body: dict[str, Any]) -> dict[str, Any]:
        """On a shard's leader: a linearizable read index (a heartbeat round, never the
        lease), which a follower uses to prove how stale it is (bounded reads)."""
        shard = _int_field(body, "shard")
        g = self._leader_group(shard, "read-index")
        index = await self._await(g, g.read_index(use_lease=False), "")
        return {"shard": shard, "index": int(index), "leader": self.id}

    async def _admin_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Host a replica of a shard here: empty, to be added as a learner; or, with
        `voters`, one of the first replicas of a brand-new shard (a split)."""
        shard = _int_field(body, "shard")
        if shard in self.host.groups:
            return {"shard": shard, "node": self.id, "created": False}
        if shard == META_GROUP:
            # A node that lost its data hosts the metadata group again once it was
            # removed from it: it then joins as a learner (add-node).
            self._add_group(META_GROUP, self.meta, ConfState())
            return {"shard": shard, "node": self.id, "created": True}
        voters = frozenset(_id_list(body, "voters")) if "voters" in body else frozenset()
        self.tombstones.discard(shard)
        self._save_tombstones()
        self._add_group(shard, self._shard_machine(shard), ConfState(voters))
        return {"shard": shard, "node": self.id, "created": True}

    async def _admin_add_learner(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._conf(body, ConfChangeType.ADD_LEARNER, "add-learner")

    async def _admin_promote(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._conf(body, ConfChangeType.ADD_VOTER, "promote")

    async def _admin_remove(self, body: dict[str, Any]) -> dict[str, Any]:
        shard, node = _int_field(body, "shard"), _int_field(body, "node")
        if (
            node == self.id
            and shard in self.host.groups
            and self.host.groups[shard].raft.role == Role.LEADER
        ):
            raise ApiError(
                409,
                "is_leader",
                f"node {node} leads shard {shard}: transfer leadership first",
                shard=shard,
            )
        return await self._conf(body, ConfChangeType.REMOVE, "remove-replica")

    async def _conf(
        self, body: dict[str, Any], kind: ConfChangeType, action: str
    ) -> dict[str, Any]:
        shard, node = _int_field(body, "shard"), _int_field(body, "node")
        g = self._leader_group(shard, action)
        try:
            outcome = await self._await(g, g.conf_change(ConfChange(kind, node)), "")
        except ConfChangeRejected as e:
            raise ApiError(409, "conf_change_rejected", str(e), shard=shard) from None
        conf = g.raft.conf
        if shard != META_GROUP:  # the metadata group is not in the shard map
            await self._record_replicas(shard, tuple(sorted(conf.voters)))
        return {
            "shard": shard,
            "node": node,
            "changed": outcome is not None,
            "voters": sorted(conf.voters),
            "learners": sorted(conf.learners),
        }

    async def _admin_drop(self, body: dict[str, Any]) -> dict[str, Any]:
        """Delete this node's replica of a shard it no longer belongs to."""
        shard = _int_field(body, "shard")
        g = self.host.groups.get(shard)
        if g is None:
            return {"shard": shard, "node": self.id, "dropped": False}
        # The shard map (committed in the metadata group) is the authority: a removed
        # replica's own log may never hear of its removal.
        holders = self.meta.map.replicas.get(shard, ())
        if self.id in holders:
            raise ApiError(
                409,
                "still_member",
                f"node {self.id} is still a member of shard {shard}; remove it first",
                shard=shard,
            )
        self.host.remove(shard)
        g.fail_all(RaftError(f"replica of shard {shard} dropped"))
        self.tombstones.add(shard)
        self._save_tombstones()
        self.engine.drop_shard(shard)
        return {"shard": shard, "node": self.id, "dropped": True}

    async def _record_replicas(self, shard: int, voters: tuple[int, ...]) -> None:
        """Keep the shard map's replica list equal to the group's voters.

        The map lives in the metadata group, so the change goes to its leader,
        which applies it as a compare-and-set on the epoch.
        """
        meta = self.host.groups[META_GROUP]
        if meta.raft.role == Role.LEADER:
            await self._admin_record({"shard": shard, "voters": list(voters)})
            return
        leader = meta.raft.leader
        if leader == 0 or leader not in self.meta.map.nodes:
            raise ApiError(
                503, "no_meta_leader", "the metadata group has no leader; retry", retry_after=1
            )
        body = {"shard": shard, "voters": list(voters)}
        try:
            await self._call(leader, "record-replicas", body, timeout=REQUEST_TIMEOUT)
        except ApiError as e:
            raise ApiError(
                503,
                "meta_update_failed",
                f"shard map update at node {leader} answered {e.status}; retry",
                retry_after=1,
            ) from e

    async def _admin_record(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the metadata leader: set a shard's replicas in the map (CAS on epoch)."""
        shard = _int_field(body, "shard")
        raw = body.get("voters")
        if not isinstance(raw, list) or not all(isinstance(v, int) for v in raw) or not raw:
            raise ApiError(400, "bad_field", "'voters' must be a non-empty list of node ids")
        voters = tuple(raw)
        meta = self._leader_group(META_GROUP, "record-replicas")

        def change(m: ShardMap) -> ShardMap | None:
            if m.replicas.get(shard) == voters:
                return None
            return m.with_changes(replicas={**m.replicas, shard: voters})

        return {"shard": shard, **await self._change_map(meta, change)}

    async def _admin_add_node(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the metadata leader: make a new node a member of the store.

        Its addresses go into the shard map (every node then connects to it) and it
        becomes a learner of the metadata group, so it learns the map. It hosts no
        replica until replicas are moved to it."""
        node = _int_field(body, "node")
        addr = NodeAddress(_str_field(body, "peer"), _str_field(body, "api"))
        meta = self._leader_group(META_GROUP, "add-node")

        def change(m: ShardMap) -> ShardMap | None:
            known = m.nodes.get(node)
            if known == addr:
                return None
            if known is not None:
                raise ApiError(
                    409, "node_exists", f"node {node} is already a member, at {known.peer}"
                )
            return m.with_changes(nodes={**m.nodes, node: addr})

        result = await self._change_map(meta, change)
        if node not in meta.raft.conf.members():
            await self._meta_conf(meta, ConfChange(ConfChangeType.ADD_LEARNER, node))
        return {"node": node, **result, **self._meta_members(meta)}

    async def _admin_remove_node(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the metadata leader: remove a node that holds no replica any more."""
        node = _int_field(body, "node")
        meta = self._leader_group(META_GROUP, "remove-node")
        held = self.meta.map.shards_on(node)
        if held:
            raise ApiError(
                409,
                "still_holds_replicas",
                f"node {node} still holds replicas of shards {held}: move them first",
            )
        if node == self.id:
            raise ApiError(
                409, "is_leader", f"node {node} leads the metadata group: transfer it first"
            )
        if node in meta.raft.conf.members():
            await self._meta_conf(meta, ConfChange(ConfChangeType.REMOVE, node))

        def change(m: ShardMap) -> ShardMap | None:
            if node not in m.nodes:
                return None
            return m.with_changes(nodes={n: a for n, a in m.nodes.items() if n != node})

        result = await self._change_map(meta, change)
        return {"node": node, **result, **self._meta_members(meta)}

    async def _meta_conf(self, meta: ReplicaGroup, change: ConfChange) -> None:
        try:
            await self._await(meta, meta.conf_change(change), "")
        except ConfChangeRejected as e:
            raise ApiError(409, "conf_change_rejected", str(e), shard=META_GROUP) from None

    @staticmethod
    def _meta_members(meta: ReplicaGroup) -> dict[str, Any]:
        conf = meta.raft.conf
        return {"meta_voters": sorted(conf.voters), "meta_learners": sorted(conf.learners)}

    async def _admin_split(self, body: dict[str, Any]) -> dict[str, Any]:
        """Move slots [start, end) of `shard` to a new shard `new_shard`, online.

        Resumable: every step checks whether it is already done. Writes to the
        moving slots get a retryable 503 between the freeze and the map update.
        """
        shard, new = _int_field(body, "shard"), _int_field(body, "new_shard")
        start, end = _int_field(body, "start"), _int_field(body, "end")
        g = self._leader_group(shard, "split-shard")
        owned = [r for r in self.meta.map.slots if r.shard == shard]
        already = all(self.meta.map.shard_of_slot(x) == new for x in (start, end - 1))
        if not already and not any(r.start <= start < end <= r.end for r in owned):
            raise ApiError(409, "not_owned", f"slots [{start}, {end}) are not all in shard {shard}")
        if not already and new in self.meta.map.replicas:
            raise ApiError(409, "shard_exists", f"shard {new} already exists")
        voters = _id_list(body, "replicas") if "replicas" in body else sorted(g.raft.conf.voters)
        if not already:
            for node in voters:
                await self._call(node, "create-replica", {"shard": new, "voters": voters})
            await self._propose_system(g, system_command("freeze", start, end, to=new))
            machine = g.machine
            assert isinstance(machine, ShardMachine)
            data = base64.b64encode(machine.export_slots(start, end)).decode()
            ingest = {
                "shard": new,
                "command": {"op": "ingest", "start": start, "end": end, "data": data},
            }
            await self._call_leader(new, voters, "system", ingest)
            await self._call_meta(
                "map-split",
                {"shard": shard, "new_shard": new, "start": start, "end": end, "voters": voters},
            )
        result = await self._propose_system(g, system_command("drop", start, end))
        return {
            "shard": shard,
            "new_shard": new,
            "slots": [start, end],
            "epoch": self.meta.map.epoch,
            **(result if isinstance(result, dict) else {}),
        }

    async def _admin_recover(self, body: dict[str, Any]) -> dict[str, Any]:
        """On a surviving replica of a shard that lost its quorum for good: rebuild the
        shard from this replica's applied state, as a new shard on `voters`.

        Explicit and lossy by design: entries a lost majority committed but this
        replica had not applied are gone. No Raft state is forced: a new group is made
        (as for a split), the survivor's keys are ingested into it, the shard map hands
        it the old shard's slots (new epoch), and the old group is dropped here, so a
        lost replica that comes back holds a shard no route leads to any more.
        """
        shard, new = _int_field(body, "shard"), _int_field(body, "new_shard")
        voters = _id_list(body, "voters")
        m = self.meta.map
        if new in m.replicas and not any(r.shard == shard for r in m.slots):
            await self._drop_local(shard)  # already recovered: finish the cleanup
            return {"shard": shard, "new_shard": new, "epoch": m.epoch, "changed": False}
        g = self.host.groups.get(shard)
        if g is None or not isinstance(g.machine, ShardMachine):
            raise ApiError(404, "no_replica", f"node {self.id} holds no replica of shard {shard}")
        if g.raft.leader != 0:
            raise ApiError(
                409,
                "has_leader",
                f"shard {shard} has a leader (node {g.raft.leader}): nothing to recover",
            )
        if new in m.replicas:
            raise ApiError(409, "shard_exists", f"shard {new} already exists")
        applied = g.raft.applied
        ranges = [(r.start, r.end) for r in m.slots if r.shard == shard]
        for node in voters:
            await self._call(node, "create-replica", {"shard": new, "voters": voters})
        for start, end in ranges:
            data = base64.b64encode(g.machine.export_slots(start, end)).decode()
            cmd = {"op": "ingest", "start": start, "end": end, "data": data}
            await self._call_leader(new, voters, "system", {"shard": new, "command": cmd})
        await self._call_meta("map-recover", {"shard": shard, "new_shard": new, "voters": voters})
        await self._drop_local(shard)
        log.warning(
            "shard recovered from this replica",
            shard=shard,
            new_shard=new,
            applied=applied,
            last_index=g.raft.log.last_index(),
        )
        return {
            "shard": shard,
            "new_shard": new,
            "survivor": self.id,
            "recovered_index": applied,
            "survivor_last_index": g.raft.log.last_index(),
            "epoch": self.meta.map.epoch,
            "changed": True,
        }

    async def _drop_local(self, shard: int) -> None:
        for _ in range(50):  # until this node's map shows the shard gone
            if shard not in self.meta.map.replicas:
                await self._admin_drop({"shard": shard})
                return
            await asyncio.sleep(0.1)

    async def _admin_map_recover(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the metadata leader: the slots of `shard` go to `new_shard`; `shard` leaves
        the map."""
        shard, new = _int_field(body, "shard"), _int_field(body, "new_shard")
        voters = tuple(_id_list(body, "voters"))
        meta = self._leader_group(META_GROUP, "map-recover")

        def change(m: ShardMap) -> ShardMap | None:
            if shard not in m.replicas:
                return None
            slots = tuple(
                SlotRange(r.start, r.end, new if r.shard == shard else r.shard) for r in m.slots
            )
            replicas = {s: h for s, h in m.replicas.items() if s != shard} | {new: voters}
            return m.with_changes(slots=slots, replicas=replicas)

        return await self._change_map(meta, change)

    async def _admin_system(self, body: dict[str, Any]) -> dict[str, Any]:
        """Propose a slot-move command on a shard this node leads."""
        shard = _int_field(body, "shard")
        cmd = body.get("command")
        if not isinstance(cmd, dict) or cmd.get("op") not in ("freeze", "ingest", "drop"):
            raise ApiError(400, "bad_field", "'command' must be a freeze, ingest or drop command")
        g = self._leader_group(shard, "system")
        fields = {k: v for k, v in cmd.items() if k not in ("op", "start", "end")}
        data = system_command(str(cmd["op"]), int(cmd["start"]), int(cmd["end"]), **fields)
        result = await self._propose_system(g, data)
        return {"shard": shard, "result": result}

    async def _propose_system(self, g: ReplicaGroup, data: bytes) -> object:
        _, result = await self._await(g, g.propose(data), "")
        return result

    async def _admin_map_split(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the metadata leader: give slots [start, end) of `shard` to `new_shard`."""
        shard, new = _int_field(body, "shard"), _int_field(body, "new_shard")
        start, end = _int_field(body, "start"), _int_field(body, "end")
        voters = tuple(_id_list(body, "voters"))
        meta = self._leader_group(META_GROUP, "map-split")

        def change(m: ShardMap) -> ShardMap | None:
            if m.shard_of_slot(start) == new:
                return None
            slots = split_range(m.slots, shard, new, start, end)
            return m.with_changes(slots=slots, replicas={**m.replicas, new: voters})

        return await self._change_map(meta, change)

    async def _change_map(
        self, meta: ReplicaGroup, change: Callable[[ShardMap], ShardMap | None]
    ) -> dict[str, Any]:
        """Apply `change` to the shard map as a compare-and-set on its epoch, retrying
        when another change won the race; `change` returns None once it is in force."""
        for _ in range(10):
            current = self.meta.map
            new = change(current)
            if new is None:
                return {"epoch": current.epoch, "changed": False}
            _, result = await self._await(meta, meta.propose(MetaMachine.change(current, new)), "")
            if isinstance(result, dict) and result.get("ok"):
                return {"epoch": new.epoch, "changed": True}
        raise ApiError(503, "meta_conflict", "the shard map kept changing; retry", retry_after=1)

    async def _call(
        self, node: int, action: str, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT * 2
    ) -> dict[str, Any]:
        """An admin call to another node (or to this one, directly)."""
        if node == self.id:
            return await self.admin(action, body)
        if self._http is None:
            self._http = aiohttp.ClientSession()  # one pool of connections for every call
        url = f"{self.meta.map.nodes[node].api}/v1/admin/{action}"
        limit = aiohttp.ClientTimeout(total=timeout)
        try:
            return await self._post(node, action, url, body, limit)
        except (aiohttp.ClientError, TimeoutError) as e:
            # A peer that is down is a retryable condition for the caller, not a crash.
            raise ApiError(
                503,
                "peer_unreachable",
                f"node {node} {action}: {type(e).__name__}: {e}",
                retry_after=1,
            ) from e

    async def _post(
        self, node: int, action: str, url: str, body: dict[str, Any], limit: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        assert self._http is not None
        async with self._http.post(url, json=body, timeout=limit) as r:
            answer = await r.json(content_type=None)
            if r.status != 200:
                raise ApiError(
                    r.status if r.status >= 400 else 503,
                    answer.get("error", "failed"),
                    f"node {node} {action}: {answer.get('message')}",
                    retry_after=1,
                    leader=answer.get("leader"),
                )
            return dict(answer)

    async def _call_leader(
        self, shard: int, nodes: list[int], action: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Call `action` on the leader of `shard`, waiting for one to be elected."""
        for _ in range(50):
            for node in nodes:
                try:
                    return await self._call(node, action, body)
                except ApiError as e:
                    if e.status not in (307, 503):
                        raise
            await asyncio.sleep(0.2)
        raise ApiError(503, "no_leader", f"shard {shard} elected no leader; retry", retry_after=1)

    async def _call_meta(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call_leader(META_GROUP, sorted(self.meta.map.nodes), action, body)

    def _leader_group(self, shard: int, action: str) -> ReplicaGroup:
        g = self._group(shard, f"/v1/admin/{action}")
        if g.raft.role != Role.LEADER:
            raise self._redirect(shard, g.raft.leader, f"/v1/admin/{action}")
        return g


def _moving(shard: int, slot: int, epoch: int) -> ApiError:
    return ApiError(
        409,
        "slot_moved",
        f"slot {slot} is moving or has moved off shard {shard}; refresh the shard map and retry",
        shard=shard,
        epoch=epoch,
        retry_after=1,
    )


def _id_list(body: dict[str, Any], name: str) -> list[int]:
    raw = body.get(name)
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
    ):
        raise ApiError(400, "bad_field", f"{name!r} must be a non-empty list of node ids")
    return sorted(set(raw))


def _str_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_field", f"{name!r} must be a non-empty string", field=name)
    return value


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "bad_field", f"{name!r} must be a non-negative integer, got {value!r}")
    return value


def _hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
