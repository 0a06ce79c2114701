"""A ShardSetUser, converged: its Secret (token, certificate, CA, endpoints) and its record
in the store's user table; and its revocation when it is deleted.

Level-based like the ShardSet's reconcile: every run reads the ShardSet, the store's CA
and the user's Secret afresh, asks `plan/users.py` what is missing, creates only that
(a token once, a certificate when none is valid), applies the Secret whole and writes
the user record (`PutUser`) when it changed or is due again. The Secret is written
before the record, so a credential the store accepts is always in the Secret.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shardset_operator.api.naming import Names
from shardset_operator.api.usermodels import (
    ShardSetUser,
    ShardSetUserStatus,
    UserCondition,
)
from shardset_operator.builders.usersecret import user_secret
from shardset_operator.clients.kube import KubeError
from shardset_operator.clients.nodeclient import ClientTls, NodeCallError, NodeClient
from shardset_operator.plan.users import (
    StoredSecret,
    StoreTls,
    UserPlan,
    blocked,
    plan_user,
    put_due,
    record_digest,
)
from shardset_operator.reconcile.context import Context
from shardset_proto import pki
from shardset_proto.admin import AdminBody, DeleteUser, PutUser
from shardset_proto.identity import TOKEN_PREFIX, token_digest
from shardset_proto.tlsfiles import TlsFilesError


@dataclass
class UserOutcome:
    status: ShardSetUserStatus
    notes: list[tuple[str, str]] = field(default_factory=list)  # (reason, message) Events


class StoreUnreachable(RuntimeError):
    """No node of the store took the admin call; the message has each node's answer."""


def new_token() -> str:
    """256 random bits (shardset_proto.identity's token format)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def converge_user(ctx: Context, body: dict[str, Any], now: datetime) -> UserOutcome:
    user = ShardSetUser.from_body(body)
    names = Names(user.spec.shard_set, user.namespace)
    notes: list[tuple[str, str]] = []
    try:
        sset = await ctx.kube.shardset(names.namespace, names.name)
        tls = await store_tls(ctx, names, sset) if sset is not None else StoreTls("Operator")
        stored = await ctx.kube.secret(user.namespace, user.name)
        why = blocked(user, sset is not None, tls, stored)
        if why is not None:
            return UserOutcome(_status(user, now, "False", why.reason, why.message))
        assert sset is not None and tls.bundle is not None
        plan = plan_user(user, names, tls, stored, now)
        token, cert = _credentials(plan, tls, stored, now, notes)
        secret = user_secret(user, names, tls.bundle, token, cert)
        if stored is None or decoded(secret) != stored.data:  # else: nothing to write
            await ctx.kube.apply(secret)
        digest = record_digest(user, token, str(sset["metadata"].get("uid", "")))
        status = _status(user, now, "True", "UserReady", _ready_message(user, names))
        status.secret, status.identity = user.name, plan.identity.uri
        status.certificate_not_after = pki.info_pem(cert[0]).not_after if cert else None
        if put_due(user, digest, now):
            await call_store(ctx, names, _nodes(sset), _put_body(user, token))
            status.applied_digest, status.applied_at = digest, now
    except (KubeError, StoreUnreachable) as e:
        reason = "StoreUnreachable" if isinstance(e, StoreUnreachable) else "ApiError"
        return UserOutcome(_status(user, now, "False", reason, str(e)), notes)
    return UserOutcome(status, notes)


def decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def _credentials(
    plan: UserPlan,
    tls: StoreTls,
    stored: StoredSecret | None,
    now: datetime,
    notes: list[tuple[str, str]],
) -> tuple[str, tuple[bytes, bytes] | None]:
    """The token and certificate to write: the stored ones, or new ones where needed."""
    token = plan.token
    if token is None:
        token = new_token()
        notes.append(("TokenCreated", "a new bearer token is in the user's Secret"))
    if not plan.issue_certs:
        return token, None
    if plan.cert_reason is None:
        assert stored is not None
        return token, (stored.data["tls.crt"], stored.data["tls.key"])
    assert tls.ca is not None
    leaf = pki.issue_leaf(tls.ca, plan.identity, now)
    notes.append(("CertificateIssued", f"new certificate for {plan.identity}: {plan.cert_reason}"))
    return token, (leaf.cert_pem, leaf.key_pem)


def _put_body(user: ShardSetUser, token: str) -> PutUser:
    return PutUser(
        name=user.name,
        role=user.spec.role,
        prefixes=list(user.spec.prefixes),
        token_sha256=token_digest(token),
    )


def _ready_message(user: ShardSetUser, names: Names) -> str:
    scope = f" on keys {', '.join(user.spec.prefixes)}*" if user.spec.prefixes else ""
    return (
        f"user {user.name} ({user.spec.role}{scope}) of ShardSet {names.name}; "
        f"credentials in Secret {user.name}"
    )


def _status(
    user: ShardSetUser, now: datetime, state: str, reason: str, message: str
) -> ShardSetUserStatus:
    """The status with its Ready condition; the transition time moves only with `state`."""
    old = next((c for c in user.status.conditions if c.type == "Ready"), None)
    since = old.last_transition_time if old is not None and old.status == state else now
    cond = UserCondition.model_validate(
        {
            "type": "Ready",
            "status": state,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
    )
    return user.status.model_copy(
        update={"observed_generation": user.generation, "conditions": [cond]}
    )


async def store_tls(ctx: Context, names: Names, sset: dict[str, Any]) -> StoreTls:
    """The store's TLS mode, the CA bundle clients trust and the CA that issues users'
    certificates (read from the Secrets the certificates phase keeps)."""
    tls = (sset.get("spec") or {}).get("tls") or {}
    mode = str(tls.get("mode") or "Operator")
    if mode == "Disabled":
        return StoreTls(mode)
    if mode == "Secrets":
        given = await ctx.kube.secret(names.namespace, str(tls.get("caSecret") or ""))
        return StoreTls(mode, given.data.get("ca.crt") if given else None)
    ca = await ctx.kube.secret(names.namespace, names.ca_secret)
    if ca is None or not ca.data.get("ca.crt") or not ca.data.get("ca.key"):
        return StoreTls(mode)
    nodes = await ctx.kube.secret(names.namespace, names.node_tls_secret)
    bundle = (nodes.data.get("ca.crt") if nodes else None) or ca.data["ca.crt"]
    return StoreTls(mode, bundle, pki.KeyPair(ca.data["ca.crt"], ca.data["ca.key"]))


def _nodes(sset: dict[str, Any]) -> list[int]:
    """Node ids to try, in order (any node forwards to the metadata leader)."""
    count = int((sset.get("spec") or {}).get("nodes") or 3)
    return list(range(1, count + 1))


async def store_client(ctx: Context, names: Names) -> NodeClient:
    """The node client presenting the operator's certificate of this store (the admin
    port takes nothing else); StoreUnreachable while that certificate is not there."""
    op = await ctx.kube.secret(names.namespace, names.operator_tls_secret)
    data = op.data if op is not None else {}
    if not all(data.get(k) for k in ("ca.crt", "tls.crt", "tls.key")):
        raise StoreUnreachable(
            f"no operator certificate for {names.name} yet (Secret {names.operator_tls_secret})"
        )
    try:
        return ctx.nodes.for_store(
            names.store_key, ClientTls(data["ca.crt"], data["tls.crt"], data["tls.key"])
        )
    except TlsFilesError as e:
        raise StoreUnreachable(
            f"the operator certificate of {names.name} does not load: {e}"
        ) from e


async def call_store(ctx: Context, names: Names, nodes: list[int], body: AdminBody) -> None:
    """The admin call on the first node that takes it (it redirects to the metadata
    leader); StoreUnreachable naming every node's answer when none does."""
    client = await store_client(ctx, names)
    errors: list[str] = []
    for node in nodes:
        try:
            await client.admin(names.admin_url(node), body)
        except NodeCallError as e:
            errors.append(str(e))
            continue
        return
    raise StoreUnreachable(f"{body.action} reached no node of {names.name}: {'; '.join(errors)}")


async def revoke_user(ctx: Context, body: dict[str, Any]) -> str:
    """DeleteUser in the store before the ShardSetUser goes; what was done, in words.

    Raises StoreUnreachable while the store exists but no node takes the call (the
    finalizer then holds the ShardSetUser and the handler retries)."""
    user = ShardSetUser.from_body(body)
    names = Names(user.spec.shard_set, user.namespace)
    sset = await ctx.kube.shardset(names.namespace, names.name)
    if sset is None or (sset.get("metadata") or {}).get("deletionTimestamp"):
        return f"ShardSet {names.name} is gone: nothing to revoke"
    if user.status.applied_at is None:
        return f"user {user.name} was never written to the store: nothing to revoke"
    await call_store(ctx, names, _nodes(sset), DeleteUser(name=user.name))
    return (
        f"user {user.name} deleted from ShardSet {names.name}: its token and certificate "
        "stop working on every node"
    )
