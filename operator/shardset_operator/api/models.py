"""The ShardSet API: pydantic models of spec and status, the one source of truth.

`crdgen` turns these models into the CustomResourceDefinition in crds/; the operator
parses every ShardSet it reconciles with them. Field names are camelCase on the wire
(aliases) and snake_case in Python. Cross-field rules that JSON schema cannot say
(replicationFactor <= nodes, immutable fields, a bound for `bounded` reads) are CEL
rules, listed in `CEL_RULES` next to the model they belong to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shardset_proto.consistency import MAX_STALENESS_LIMIT_MS, ReadMode

GROUP = "shardset.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ShardSet"
PLURAL = "shardsets"
SINGULAR = "shardset"
SHORT_NAMES = ("sset",)

DEFAULT_NODE_IMAGE = "shardset/node:dev"
# The read modes and the largest bound nodes accept (MAX_STALENESS_LIMIT_MS) are the
# contract's (shardset_proto.consistency).
ConsistencyMode = ReadMode
ConditionType = Literal["Ready", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    # Unknown fields are ignored rather than refused: the API server already pruned
    # everything the schema does not declare.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


# Free-form Kubernetes structures (core/v1 Affinity, Toleration, ...). The operator copies
# them into the pod template untouched; the API server validates them there.
KubeObject = dict[str, Any]


class ConsistencySpec(_Model):
    """Default read consistency of every node of the store."""

    mode: ConsistencyMode = Field(
        default="linearizable",
        description=(
            "Read consistency nodes use when a request names none: linearizable (ReadIndex "
            "on the leader), lease (leader lease, no round trip; assumes bounded clock "
            "drift), bounded (any replica at most maxStalenessMs behind), session "
            "(read-your-writes per client session), eventual (any replica, at once). "
            "Changed live, without restarting pods."
        ),
    )
    max_staleness_ms: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STALENESS_LIMIT_MS,
        description="Staleness bound in milliseconds for mode 'bounded' (required there).",
    )


class StorageSpec(_Model):
    """Each node's persistent volume (write-ahead log, snapshots, SQLite)."""

    size: str = Field(
        default="1Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="Requested size of each node's volume, a Kubernetes quantity (e.g. 10Gi).",
    )
    storage_class_name: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "StorageClass of the volumes; the cluster default when unset. Immutable: "
            "existing volumes cannot move to another class."
        ),
    )
    retain_on_delete: bool = Field(
        default=True,
        description=(
            "Keep the volumes (and so the data) when the ShardSet is deleted. "
            "false deletes them with it."
        ),
    )


class FailoverSpec(_Model):
    """When a node counts as gone for good and its replicas are rebuilt elsewhere."""

    node_gone_after_seconds: int = Field(
        default=300,
        ge=30,
        le=86_400,
        description=(
            "Seconds a node may be unreachable before it is considered gone: its replicas "
            "are then rebuilt on the other nodes (when there are enough of them)."
        ),
    )


class RebalanceSpec(_Model):
    """Limits on moving shard replicas between nodes."""

    max_concurrent_moves: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Replica moves the operator runs at the same time.",
    )
    paused: bool = Field(default=False, description="Stop starting new replica moves.")


TlsMode = Literal["Operator", "Secrets", "Disabled"]


class TlsSpec(_Model):
    """Certificates of the store's nodes and of the operator (mutual TLS everywhere)."""

    mode: TlsMode = Field(
        default="Operator",
        description=(
            "Operator: the operator runs a CA for this store (Secret <name>-ca) and issues "
            "and renews the node and operator certificates itself. Secrets: you provide "
            "them (e.g. cert-manager Certificates: caSecret, nodeSecretPrefix, "
            "operatorSecret) and the operator copies them to the nodes on every change. "
            "Disabled: no TLS and no authentication (anyone who reaches a node owns the "
            "store). Immutable: the store's addresses (http or https) are fixed at creation."
        ),
    )
    ca_secret: str | None = Field(
        default=None,
        min_length=1,
        description="mode Secrets: a Secret whose ca.crt is the CA bundle nodes, the "
        "operator and clients trust.",
    )
    node_secret_prefix: str | None = Field(
        default=None,
        min_length=1,
        description="mode Secrets: Secrets <prefix>-<ordinal> (type kubernetes.io/tls, "
        "tls.crt and tls.key) hold each node pod's certificate, with the URI SAN "
        "shardset://<namespace>.<name>/node/<ordinal+1> and the pod's DNS names.",
    )
    operator_secret: str | None = Field(
        default=None,
        min_length=1,
        description="mode Secrets: a kubernetes.io/tls Secret with the operator's client "
        "certificate (URI SAN shardset://<namespace>.<name>/operator).",
    )


class ShardSetSpec(_Model):
    """The desired store: its size, replication, read consistency and pod settings."""

    nodes: int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Number of nodes. Scaling up adds nodes and moves replicas onto them; scaling "
            "down first moves every replica off the highest nodes, then removes them."
        ),
    )
    shards: int = Field(
        default=4,
        ge=1,
        le=1024,
        description=(
            "Number of shards (Raft groups) the key space is split into. It can grow: "
            "shards are split online, half of the widest slot range at a time."
        ),
    )
    replication_factor: int = Field(
        default=3,
        ge=1,
        le=7,
        description=(
            "Replicas of each shard, on distinct nodes; at most `nodes`. A shard survives "
            "the loss of (replicationFactor-1)/2 of its replicas."
        ),
    )
    consistency: ConsistencySpec = Field(
        default_factory=ConsistencySpec, description=ConsistencySpec.__doc__
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Node container image. Unset: the operator's default "
            f"(env SHARDSET_NODE_IMAGE, else {DEFAULT_NODE_IMAGE})."
        ),
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of the node container image."
    )
    resources: KubeObject | None = Field(
        default=None,
        description="Node container resources (core/v1 ResourceRequirements: requests, limits).",
    )
    storage: StorageSpec = Field(default_factory=StorageSpec, description=StorageSpec.__doc__)
    affinity: KubeObject | None = Field(
        default=None,
        description=(
            "Pod affinity (core/v1 Affinity). Unset: a preferred podAntiAffinity spreads "
            "the nodes of one store across hosts."
        ),
    )
    tolerations: list[KubeObject] | None = Field(
        default=None, description="Pod tolerations (core/v1 Toleration)."
    )
    topology_spread_constraints: list[KubeObject] | None = Field(
        default=None, description="Pod topology spread constraints (core/v1)."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the pods must be scheduled on."
    )
    failover: FailoverSpec = Field(default_factory=FailoverSpec, description=FailoverSpec.__doc__)
    rebalance: RebalanceSpec = Field(
        default_factory=RebalanceSpec, description=RebalanceSpec.__doc__
    )
    tls: TlsSpec = Field(default_factory=TlsSpec, description=TlsSpec.__doc__)


class Condition(_Model):
    """One observation of the store, per Kubernetes API conventions."""

    type: ConditionType = Field(description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", description="What a person needs to know, in words.")
    last_transition_time: datetime = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed for."
    )


class ShardCounts(_Model):
    """Health of the store's shards as the nodes report it."""

    total: int = Field(default=0, ge=0, description="Shards in the store.")
    healthy: int = Field(
        default=0, ge=0, description="Shards with a leader and replicationFactor voters up."
    )
    under_replicated: int = Field(
        default=0, ge=0, description="Shards with fewer responsive voters than replicationFactor."
    )
    leaderless: int = Field(default=0, ge=0, description="Shards without a known leader.")


class ConsistencyStatus(_Model):
    """The read consistency in force: the mode every node reports."""

    mode: ConsistencyMode | None = Field(
        default=None,
        description="The mode all nodes run; absent while they disagree or cannot be asked.",
    )
    max_staleness_ms: int | None = Field(
        default=None, description="The bound all nodes run with (mode bounded)."
    )
    nodes_applied: int = Field(
        default=0, ge=0, description="Nodes that report the desired mode and bound."
    )


class MoveRecord(_Model):
    """A replica move: a replica of `shard` is added on `target`, then `source`'s removed."""

    shard: int = Field(ge=1, description="The shard whose replica moves.")
    source: int | None = Field(
        default=None, ge=1, description="Node losing the replica; absent when one is only added."
    )
    target: int = Field(ge=1, description="Node gaining the replica.")


class Journal(_Model):
    """The one operation in progress, kept in status: a restarted operator resumes it."""

    operation: str = Field(description="What is being done and why, in words.")
    started_at: datetime = Field(description="When the operation started.")
    updated_at: datetime = Field(description="When a step last ran or was checked.")
    move: MoveRecord | None = Field(default=None, description="The replica move in progress.")
    step: str = Field(default="", description="The last step taken or awaited, in words.")
    moves_done: int = Field(default=0, ge=0, description="Replica moves this operation finished.")
    moves_left: int = Field(
        default=0, ge=0, description="Replica moves still planned (as of the last plan)."
    )


class Unreachable(_Model):
    """A member node that stopped answering the operator, and since when."""

    node: int = Field(ge=1, description="Node id (StatefulSet ordinal + 1).")
    since: datetime = Field(description="First reconcile it did not answer in.")


class TlsStatus(_Model):
    """The store's certificates: when they expire, and the CA rotation in progress."""

    mode: TlsMode = Field(description="spec.tls.mode in force.")
    ca_not_after: datetime | None = Field(
        default=None, description="Expiry of the earliest CA in the trusted bundle."
    )
    node_not_after: datetime | None = Field(
        default=None, description="Expiry of the earliest node certificate."
    )
    operator_not_after: datetime | None = Field(
        default=None, description="Expiry of the operator's client certificate."
    )
    rotation: str | None = Field(
        default=None, description="The CA rotation in progress, its step in words."
    )
    last_change: str | None = Field(
        default=None, description="The last certificate change, and why."
    )


class ShardSetStatus(_Model):
    """What the operator last observed."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation of the spec this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing and Degraded."
    )
    ready_nodes: int = Field(default=0, ge=0, description="Node pods that pass readiness.")
    shards: ShardCounts = Field(default_factory=ShardCounts, description=ShardCounts.__doc__)
    consistency: ConsistencyStatus = Field(
        default_factory=ConsistencyStatus, description=ConsistencyStatus.__doc__
    )
    operation: str | None = Field(
        default=None, description="The operation in progress, in words; absent when idle."
    )
    bootstrapped: bool = Field(
        default=False, description="The first shard map was written; it never changes after."
    )
    members: list[int] = Field(
        default_factory=list, description="Node ids in the store's shard map."
    )
    map_epoch: int | None = Field(
        default=None, description="Epoch of the newest shard map seen (older ones are ignored)."
    )
    journal: Journal | None = Field(default=None, description=Journal.__doc__)
    last_operation: str | None = Field(
        default=None, description="The last operation finished, its moves and duration."
    )
    unreachable: list[Unreachable] = Field(
        default_factory=list,
        description="Members not answering; after failover.nodeGoneAfterSeconds their "
        "replicas are rebuilt on other nodes.",
    )
    tls: TlsStatus | None = Field(default=None, description=TlsStatus.__doc__)


# CEL rules (x-kubernetes-validations), by the dotted path of the schema node they sit on.
# Transition rules (oldSelf) only run on update, so creation is never refused by them.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    # Object names become Service names (<name>-peers: DNS-1035 labels of at most 63
    # characters) and StatefulSet names (pods get a 10-character revision label suffix).
    "": [
        {
            "rule": "self.metadata.name.size() <= 52",
            "message": "metadata.name must be at most 52 characters (it names a StatefulSet)",
        },
        {
            "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "message": "metadata.name must be a DNS-1035 label (it names Services): "
            "lower case letters, digits and '-', starting with a letter",
        },
    ],
    "spec": [
        {
            "rule": "self.replicationFactor <= self.nodes",
            "message": "replicationFactor must not exceed nodes",
            "fieldPath": ".replicationFactor",
        },
    ],
    "spec.shards": [
        {
            "rule": "self >= oldSelf",
            "message": "shards can only grow (slots are split into new shards; merging "
            "shards is not supported)",
        },
    ],
    "spec.consistency": [
        {
            "rule": "self.mode != 'bounded' || has(self.maxStalenessMs)",
            "message": "maxStalenessMs is required when mode is bounded",
            "fieldPath": ".maxStalenessMs",
        },
    ],
    "spec.tls": [
        {
            "rule": "self.mode == oldSelf.mode",
            "message": "tls.mode is immutable: the store's first shard map fixed its "
            "addresses as http or https, and nodes of both kinds cannot talk to each "
            "other; create a new ShardSet to change it",
            "fieldPath": ".mode",
        },
        {
            "rule": "self.mode != 'Secrets' || (has(self.caSecret) && "
            "has(self.nodeSecretPrefix) && has(self.operatorSecret))",
            "message": "mode Secrets needs caSecret, nodeSecretPrefix and operatorSecret",
        },
    ],
    # On the parent, not the field: a rule on the field itself would not run when the
    # field is added or removed, and both would move volumes to another class.
    "spec.storage": [
        {
            "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && "
            "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
            "message": "storageClassName is immutable",
            "fieldPath": ".storageClassName",
        },
    ],
}

# Columns `kubectl get shardsets` prints.
PRINTER_COLUMNS: list[dict[str, str]] = [
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes"},
    {"name": "Shards", "type": "integer", "jsonPath": ".spec.shards"},
    {"name": "Replication", "type": "integer", "jsonPath": ".spec.replicationFactor"},
    {"name": "Consistency", "type": "string", "jsonPath": ".status.consistency.mode"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class ShardSet(_Model):
    """A whole custom resource as the operator reads it."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    spec: ShardSetSpec
    status: ShardSetStatus

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ShardSet:
        meta = body.get("metadata", {})
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=meta.get("generation", 0),
            spec=ShardSetSpec.model_validate(body.get("spec") or {}),
            status=ShardSetStatus.model_validate(body.get("status") or {}),
        )
