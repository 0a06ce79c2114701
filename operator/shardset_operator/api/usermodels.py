"""The ShardSetUser API: a user of one store, and the Secret holding its credentials.

Strimzi's KafkaUser is the model: the resource names the store and a role, the operator
creates the user in the store (`PutUser` on its admin API), issues a client certificate
from the store's CA and a bearer token, and writes both to a Secret named after the user
that the application mounts. Deleting the resource deletes the user (`DeleteUser`), which
revokes its certificate and token on every node within seconds (docs/security.md).

`crdgen` turns these models into crds/shardset.io_shardsetusers.yaml.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.identity import USER_NAME_PATTERN, Role

USER_KIND = "ShardSetUser"
USER_PLURAL = "shardsetusers"
USER_SINGULAR = "shardsetuser"
USER_SHORT_NAMES = ("ssu",)

ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ShardSetUserSpec(_Model):
    """Which store the user belongs to, and what it may do there."""

    shard_set: str = Field(
        min_length=1,
        max_length=52,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Name of the ShardSet (in the same namespace) this user belongs to. Immutable.",
    )
    role: Role = Field(
        default=Role.READ,
        description="read (get, scan, shard map, status), readwrite (also put, delete, cas) "
        "or admin (also the admin API, with the certificate only). Changed live.",
    )
    prefixes: list[Annotated[str, Field(min_length=1, max_length=MAX_KEY_BYTES)]] = Field(
        default_factory=list,
        max_length=64,
        description="Key prefixes the user may touch (empty: every key). Changed live.",
    )


class UserCondition(_Model):
    """One observation of the user, per Kubernetes API conventions."""

    type: Literal["Ready"] = Field(description="Ready: the user exists in the store.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", description="What a person needs to know, in words.")
    last_transition_time: datetime = Field(description="When status last changed (RFC 3339).")


class ShardSetUserStatus(_Model):
    """What the operator last did for the user."""

    observed_generation: int | None = Field(
        default=None, description="metadata.generation this status describes."
    )
    conditions: list[UserCondition] = Field(default_factory=list, description="Ready.")
    secret: str | None = Field(
        default=None,
        description="The Secret with ca.crt, tls.crt, tls.key, token, url and wire.",
    )
    identity: str | None = Field(
        default=None, description="The certificate's identity, shardset://<ns>.<store>/user/<name>."
    )
    certificate_not_after: datetime | None = Field(
        default=None, description="When the user's certificate expires (renewed at 2/3)."
    )
    applied_digest: str | None = Field(
        default=None,
        description="Digest of the user record last written to the store (role, prefixes, "
        "token digest, the ShardSet's uid): a change writes it again.",
    )
    applied_at: datetime | None = Field(
        default=None, description="When the user record was last written to the store."
    )


USER_CEL_RULES: dict[str, list[dict[str, str]]] = {
    "": [
        {
            "rule": f"self.metadata.name.matches('{USER_NAME_PATTERN}')",
            "message": "metadata.name must be 1-63 lowercase letters, digits, '.' or '-' "
            "(it names the user in the store and its Secret)",
        },
    ],
    "spec.shardSet": [{"rule": "self == oldSelf", "message": "shardSet is immutable"}],
}

USER_PRINTER_COLUMNS: list[dict[str, str]] = [
    {"name": "ShardSet", "type": "string", "jsonPath": ".spec.shardSet"},
    {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
    {"name": "Secret", "type": "string", "jsonPath": ".status.secret"},
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class ShardSetUser(_Model):
    """A whole ShardSetUser as the operator reads it."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    deleting: bool = False
    spec: ShardSetUserSpec
    status: ShardSetUserStatus

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ShardSetUser:
        meta = body.get("metadata", {})
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            generation=meta.get("generation", 0),
            deleting=bool(meta.get("deletionTimestamp")),
            spec=ShardSetUserSpec.model_validate(body.get("spec") or {}),
            status=ShardSetUserStatus.model_validate(body.get("status") or {}),
        )
