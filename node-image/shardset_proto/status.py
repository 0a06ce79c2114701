"""What a node reports about itself: GET /v1/status and GET /v1/shardmap.

The node serves these models and the operator, the client and `shardset local` parse
them. Field names and types are those the node has always served. Parsing is lenient
where readers always were (a field an older node does not send takes its default, a
field a newer node adds is ignored), so a rolling upgrade never makes a node look
unreachable.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from shardset_proto.placement import SlotRange
from shardset_proto.shardmap import NodeAddress, ShardMap

META_GROUP = 0  # the metadata group's id: it holds the shard map
META_KEY = "meta"  # the metadata group's key in a status report's `groups`


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object the node serves."""
        return self.model_dump(mode="json", by_alias=True)


class GroupRole(StrEnum):
    """A replica's Raft role, as `shardset_raft.Role` names it (lower case)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class FollowerProgress(_Report):
    """The leader's view of one follower's replication."""

    match: int = 0  # highest log index known to be replicated there
    lag: int = 0  # entries behind the leader's last index
    state: Literal["probe", "replicate", "snapshot"] | None = None


class ConsistencyCheckView(_Report):
    """The last consistency check of a shard its leader ran (issue 15): every voter's
    digest of the state at one applied index; `mismatched` names the replicas that
    disagree with the majority (or whose rows failed their checksums)."""

    index: int
    at: float = 0.0  # unix time the check finished
    ok: bool = True
    digests: dict[int, str | None] = Field(default_factory=dict)  # None: no answer
    mismatched: list[int] = Field(default_factory=list)
    decided: bool = True  # False: no majority agreed, so no replica was rebuilt


class GroupStatus(_Report):
    """One Raft group (a shard, or the metadata group) as one of its replicas sees it."""

    role: GroupRole
    term: int = 0
    leader: int = 0  # 0: no known leader
    commit: int = 0
    applied: int = 0
    last_index: int = 0
    voters: list[int] = Field(default_factory=list)
    learners: list[int] = Field(default_factory=list)
    # Only on the leader: every other member's progress.
    followers: dict[int, FollowerProgress] | None = None
    # Issue 15, only when set: why this replica is corrupt (a row failed its checksum, or
    # a consistency check outvoted it): it serves nothing and is being rebuilt.
    corrupt: str | None = None
    # Issue 15, only on a leader that ran one: its last consistency check of the shard.
    consistency_check: ConsistencyCheckView | None = None
    # Issue 15, only when set: this replica cut a damaged log tail at its last start and
    # may have lost entries it acknowledged up to this index (Protocol-Aware Recovery):
    # until its shard commits past it, it neither votes nor counts toward commitment.
    recovering: int | None = None

    @property
    def is_leader(self) -> bool:
        return self.role == GroupRole.LEADER

    def lags(self) -> dict[int, int]:
        """Entries each follower is behind (the leader's view; empty elsewhere)."""
        return {n: f.lag for n, f in (self.followers or {}).items()}

    @model_serializer(mode="wrap")
    def _omit_followers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A follower's entry has no "followers" key at all (not null), as always.
        out: dict[str, Any] = handler(self)
        for optional in ("followers", "corrupt", "consistency_check", "recovering"):
            if getattr(self, optional) is None:
                out.pop(optional, None)
        return out


class ConsistencyView(_Report):
    """A node's default read consistency (what POST /v1/admin/consistency sets)."""

    mode: str
    max_staleness_ms: int | None = Field(default=None, alias="maxStalenessMs")


def group_key(gid: int) -> str:
    """A group's key in `NodeStatus.groups`."""
    return META_KEY if gid == META_GROUP else str(gid)


class DiskView(_Report):
    """The node's data file system (absent from older nodes): `full` when the node
    refuses writes for lack of space (free space below `minFreeBytes`, or a write that
    failed with ENOSPC), and `stalled` (since `since`, a Unix time) when a write failed
    so and its Raft groups wait for space; `reason` says which."""

    full: bool = False
    stalled: bool = False
    reason: str | None = None
    since: float | None = None
    free_bytes: int | None = Field(default=None, alias="freeBytes")
    total_bytes: int | None = Field(default=None, alias="totalBytes")
    min_free_bytes: int | None = Field(default=None, alias="minFreeBytes")


class TlsView(_Report):
    """The certificates a TLS node has loaded (absent from an insecure node): the
    operator renews before `certNotAfter` and ends a CA rotation only when every node
    reports the new CA among `caFingerprints` (issue 16)."""

    identity: str  # the URI SAN of the node's certificate
    cert_serial: str = Field(alias="certSerial")  # hex
    cert_fingerprint: str = Field(alias="certFingerprint")  # SHA-256 of the DER, hex
    cert_not_after: float = Field(alias="certNotAfter")  # Unix time
    ca_fingerprints: list[str] = Field(alias="caFingerprints")  # every CA it trusts now
    ca_not_after: float = Field(alias="caNotAfter")  # the earliest CA expiry, Unix time
    loaded_at: float = Field(alias="loadedAt")  # when these files were (re)loaded


class NodeStatus(_Report):
    """GET /v1/status: the node, how its data began, its shard map epoch, its default
    read consistency, and every Raft group it hosts (keyed by group_key)."""

    node: int
    origin: Literal["bootstrap", "rejoin"] | None = None
    epoch: int = 0
    consistency: ConsistencyView | None = None
    groups: dict[str, GroupStatus] = Field(default_factory=dict)
    disk: DiskView | None = None
    tls: TlsView | None = None

    @model_serializer(mode="wrap")
    def _omit_disk(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Served only by nodes that know them: no "disk": null for readers of old reports.
        out: dict[str, Any] = handler(self)
        for optional in ("disk", "tls"):
            if getattr(self, optional) is None:
                out.pop(optional, None)
        return out

    @property
    def meta(self) -> GroupStatus | None:
        """This node's replica of the metadata group, if it hosts one."""
        return self.groups.get(META_KEY)

    def group(self, shard: int) -> GroupStatus | None:
        """This node's replica of `shard` (0: the metadata group), if it hosts one."""
        return self.groups.get(group_key(shard))

    @property
    def shards(self) -> dict[int, GroupStatus]:
        """The shards this node hosts a replica of (the metadata group left out)."""
        return {int(k): g for k, g in self.groups.items() if k.isdigit()}


class AddressView(_Report):
    peer: str  # host:port of the peer transport (and the wire protocol when `wire` is "")
    api: str  # http(s)://host:port of the HTTP API
    admin: str = ""  # https://host:port of the admin API ("": on `api`)
    wire: str = ""  # host:port of the wire protocol ("": on `peer`)


class ShardMapView(_Report):
    """GET /v1/shardmap: the shard map as this node holds it, plus the leader of each
    shard as far as it knows (0: none known)."""

    epoch: int
    slots: list[tuple[int, int, int]]  # [start, end, shard]: slots [start, end)
    replicas: dict[int, list[int]]
    nodes: dict[int, AddressView]
    leaders: dict[int, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, m: ShardMap, leaders: dict[int, int]) -> ShardMapView:
        return cls(
            epoch=m.epoch,
            slots=[(r.start, r.end, r.shard) for r in m.slots],
            replicas={s: list(h) for s, h in m.replicas.items()},
            nodes={
                n: AddressView(peer=a.peer, api=a.api, admin=a.admin, wire=a.wire)
                for n, a in m.nodes.items()
            },
            leaders=leaders,
        )

    def shard_map(self) -> ShardMap:
        """The map itself (its checks run: slots must tile the slot space)."""
        return ShardMap(
            epoch=self.epoch,
            slots=tuple(SlotRange(a, b, s) for a, b, s in self.slots),
            replicas={s: tuple(h) for s, h in self.replicas.items()},
            nodes={
                n: NodeAddress(a.peer, a.api, a.admin, a.wire) for n, a in self.nodes.items()
            },
        )
