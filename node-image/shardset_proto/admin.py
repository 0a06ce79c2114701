"""The admin API: its 22 actions and one typed request body per action.

The operator (and a node orchestrating a split or a recovery) POSTs a body to
`/v1/admin/<action>` of a node; every action is idempotent, so a caller retries it
freely. The JSON field names and types are those the node has always accepted, so
the wire format is unchanged; a body that does not validate is refused with the name
of the offending field (BadBody).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.consistency import MAX_STALENESS_LIMIT_MS, ReadMode
from shardset_proto.identity import USER_NAME_PATTERN, Role
from shardset_proto.urls import admin_path


class AdminAction(StrEnum):
    """The admin actions; each value is the action's name in its URL."""

    TRANSFER_LEADER = "transfer-leader"
    CREATE_REPLICA = "create-replica"
    ADD_LEARNER = "add-learner"
    PROMOTE = "promote"
    REMOVE_REPLICA = "remove-replica"
    DROP_REPLICA = "drop-replica"
    RECORD_REPLICAS = "record-replicas"
    SPLIT_SHARD = "split-shard"
    SYSTEM = "system"
    MAP_SPLIT = "map-split"
    CONSISTENCY = "consistency"
    ADD_NODE = "add-node"
    RECOVER_SHARD = "recover-shard"
    MAP_RECOVER = "map-recover"
    REMOVE_NODE = "remove-node"
    READ_INDEX = "read-index"
    # Consistency checks and rebuilds of corrupt replicas (issue 15).
    CHECK_CONSISTENCY = "check-consistency"
    REPLICA_DIGEST = "replica-digest"
    SHARD_STATE = "shard-state"
    REBUILD_REPLICA = "rebuild-replica"
    # The store's users, kept in the metadata group (issue 16, shardset_proto.users).
    PUT_USER = "put-user"
    DELETE_USER = "delete-user"

    @property
    def path(self) -> str:
        return admin_path(self.value)


class BadBody(ValueError):
    """An admin body that does not validate; `field` names the first offending field
    (dotted for a nested one), `missing` says whether it was absent."""

    def __init__(self, action: AdminAction, field: str, message: str, missing: bool) -> None:
        super().__init__(f"{action}: {field!r}: {message}")
        self.action = action
        self.field = field
        self.missing = missing


def _ids(value: list[int]) -> list[int]:
    # The node has always used node-id lists sorted and without repeats.
    return sorted(set(value))


# A shard id, a node id, a slot: a non-negative integer (JSON true/false are refused).
Index = Annotated[int, Field(strict=True, ge=0)]
NodeId = Annotated[int, Field(strict=True, gt=0)]
# A non-empty list of node ids, sorted, without repeats.
NodeIds = Annotated[list[NodeId], Field(min_length=1), AfterValidator(_ids)]
NonEmpty = Annotated[str, Field(strict=True, min_length=1)]


class AdminBody(BaseModel):
    """The request body of one admin action (`action`)."""

    # Fields a body does not know are ignored, as the node always did.
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
    action: ClassVar[AdminAction]

    @classmethod
    def path(cls) -> str:
        """The URL path to POST this body to."""
        return cls.action.path

    @classmethod
    def parse(cls, raw: object) -> Self:
        """A body from decoded JSON; BadBody names the first field that is wrong."""
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise _bad(cls, e) from None

    def to_json(self) -> dict[str, Any]:
        """The JSON object to send; optional fields left unset are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _bad(body: type[AdminBody], error: ValidationError) -> BadBody:
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # A defaulted field fails under its Python name: report its JSON name.
    known = body.model_fields.get(loc[0]) if loc else None
    if known is not None and known.alias:
        loc[0] = known.alias
    field = ".".join(loc) or "body"
    return BadBody(body.action, field, first["msg"], first["type"] == "missing")


class TransferLeader(AdminBody):
    """On the shard's leader: hand leadership to node `to`."""

    action = AdminAction.TRANSFER_LEADER
    shard: Index
    to: Index


class CreateReplica(AdminBody):
    """Host a replica here: empty (to be added as a learner), or with `voters` one of
    the first replicas of a brand-new shard (a split, a recovery)."""

    action = AdminAction.CREATE_REPLICA
    shard: Index
    voters: NodeIds | None = None


class MembershipChange(AdminBody):
    """On the shard's leader: one change to the shard's Raft membership, for `node`."""

    shard: Index
    node: Index


class AddLearner(MembershipChange):
    action = AdminAction.ADD_LEARNER


class Promote(MembershipChange):
    """Make learner `node` a voter of the shard."""

    action = AdminAction.PROMOTE


class RemoveReplica(MembershipChange):
    action = AdminAction.REMOVE_REPLICA


class DropReplica(AdminBody):
    """Delete this node's copy of a shard it no longer belongs to."""

    action = AdminAction.DROP_REPLICA
    shard: Index


class RecordReplicas(AdminBody):
    """On the metadata leader: set a shard's replicas in the shard map. The order is
    kept (the first replica is the shard's preferred leader)."""

    action = AdminAction.RECORD_REPLICAS
    shard: Index
    voters: Annotated[list[Annotated[int, Field(strict=True)]], Field(min_length=1)]


class SplitShard(AdminBody):
    """On the shard's leader: move slots [start, end) to the new shard `new_shard`,
    on `replicas` (default: the shard's voters)."""

    action = AdminAction.SPLIT_SHARD
    shard: Index
    new_shard: Index
    start: Index
    end: Index
    replicas: NodeIds | None = None


class SystemCommand(BaseModel):
    """A slot-move command proposed on a shard: freeze, ingest (with the exported
    keys, base64) or drop slots [start, end)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: Literal["freeze", "ingest", "drop"]
    start: Index
    end: Index
    to: Index | None = None  # freeze: the shard the slots go to
    data: str | None = None  # ingest: the exported keys, base64


class ProposeSystem(AdminBody):
    """On the shard's leader: propose a slot-move command."""

    action = AdminAction.SYSTEM
    shard: Index
    command: SystemCommand


class MapSplit(AdminBody):
    """On the metadata leader: give slots [start, end) of `shard` to `new_shard`."""

    action = AdminAction.MAP_SPLIT
    shard: Index
    new_shard: Index
    start: Index
    end: Index
    voters: NodeIds


class SetConsistency(AdminBody):
    """Change the node's default read consistency, live. A bounded mode needs a bound;
    `maxStalenessMs` is always sent (null: no bound)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    action = AdminAction.CONSISTENCY
    mode: ReadMode
    max_staleness_ms: Annotated[
        int | None,
        Field(alias="maxStalenessMs", strict=True, gt=0, le=MAX_STALENESS_LIMIT_MS),
    ] = Field(default=None, validate_default=True)

    @field_validator("max_staleness_ms")
    @classmethod
    def _bounded_needs_bound(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("mode") == "bounded":
            raise ValueError("required (an integer of milliseconds) for mode 'bounded'")
        return value

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class AddNode(AdminBody):
    """On the metadata leader: make node `node` (at `peer` and `api`) a member."""

    action = AdminAction.ADD_NODE
    node: Index
    peer: NonEmpty  # host:port of its peer transport
    api: NonEmpty  # http(s)://host:port of its API
    admin: str | None = None  # https://host:port of its admin API (None: on `api`)
    wire: str | None = None  # host:port of its wire protocol (None: on `peer`)


class RecoverShard(AdminBody):
    """On a surviving replica of a shard that lost its quorum for good: rebuild it
    from this replica as `new_shard` on `voters` (lossy, only when asked)."""

    action = AdminAction.RECOVER_SHARD
    shard: Index
    new_shard: Index
    voters: NodeIds


class MapRecover(AdminBody):
    """On the metadata leader: the slots of `shard` go to `new_shard` on `voters`."""

    action = AdminAction.MAP_RECOVER
    shard: Index
    new_shard: Index
    voters: NodeIds


class RemoveNode(AdminBody):
    """On the metadata leader: remove a node that holds no replica any more."""

    action = AdminAction.REMOVE_NODE
    node: Index


class ReadIndex(AdminBody):
    """On the shard's leader: a linearizable read index (a heartbeat round)."""

    action = AdminAction.READ_INDEX
    shard: Index


class CheckConsistency(AdminBody):
    """On the shard's leader: run a consistency check of the shard now (every voter
    digests its state at one applied index; the outvoted replicas are rebuilt)."""

    action = AdminAction.CHECK_CONSISTENCY
    shard: Index


class ReplicaDigest(AdminBody):
    """On a replica: its digest of the shard's state at the index of check entry `index`."""

    action = AdminAction.REPLICA_DIGEST
    shard: Index
    index: Index


class ShardState(AdminBody):
    """On the shard's leader: its whole state (base64), once applied to `min_index` at
    least; a corrupt replica installs it to rebuild itself."""

    action = AdminAction.SHARD_STATE
    shard: Index
    min_index: Index = 0


class RebuildReplica(AdminBody):
    """On a replica: mark it corrupt (`reason`) and rebuild it from the shard's leader."""

    action = AdminAction.REBUILD_REPLICA
    shard: Index
    reason: str = "asked to rebuild"


class PutUser(AdminBody):
    """On the metadata leader: create or replace user `name` (a ShardSetUser) in the
    store's user table; its role and prefixes apply to its certificate and token at once."""

    action = AdminAction.PUT_USER
    name: Annotated[str, Field(pattern=USER_NAME_PATTERN)]
    role: Role
    prefixes: list[Annotated[str, Field(min_length=1, max_length=MAX_KEY_BYTES)]] = Field(
        default_factory=list, max_length=64
    )
    # SHA-256 (hex) of the user's bearer token; None: the user has no token (certificate only).
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class DeleteUser(AdminBody):
    """On the metadata leader: remove user `name`; its certificate and token stop working
    on every node as soon as the node applies the change (seconds)."""

    action = AdminAction.DELETE_USER
    name: Annotated[str, Field(pattern=USER_NAME_PATTERN)]


BODIES: dict[AdminAction, type[AdminBody]] = {
    b.action: b
    for b in (
        TransferLeader,
        CreateReplica,
        AddLearner,
        Promote,
        RemoveReplica,
        DropReplica,
        RecordReplicas,
        SplitShard,
        ProposeSystem,
        MapSplit,
        SetConsistency,
        AddNode,
        RecoverShard,
        MapRecover,
        RemoveNode,
        ReadIndex,
        CheckConsistency,
        ReplicaDigest,
        ShardState,
        RebuildReplica,
        PutUser,
        DeleteUser,
    )
}


def parse_body(action: AdminAction, raw: object) -> AdminBody:
    """The typed body of `action` from decoded JSON (BadBody if it does not validate)."""
    return BODIES[action].parse(raw)
