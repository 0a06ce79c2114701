"""What a ShardSetUser needs next: a token, a certificate, the user record in the store.

Pure: the inputs are what the operator just read (the user, its ShardSet's TLS mode, the
store's CA, the user's Secret as it is), the output says what to create and whether to
write the user record again. `reconcile/users.py` does the I/O. Every decision is taken
from the current state, never from the previous step, so an interrupted run converges.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from cryptography import x509

from shardset_operator.api.naming import Names
from shardset_operator.api.usermodels import ShardSetUser
from shardset_proto import pki
from shardset_proto.identity import TOKEN_PREFIX, Identity, token_digest

# The user record is written again this often even when nothing changed: the operator
# cannot read the store's user table, and a store restored from an old backup or rebuilt
# under the same name must get its users back without anyone touching them.
REPUT_AFTER = dt.timedelta(minutes=10)
# secrets.token_urlsafe(32): 43 url-safe base64 characters after the prefix.
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43


@dataclass(frozen=True)
class StoredSecret:
    """A Secret as read: its data decoded, and the uids of its owners."""

    data: dict[str, bytes]
    owners: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreTls:
    """The store's TLS as the user's credentials need it."""

    mode: str  # spec.tls.mode of the ShardSet: Operator, Secrets or Disabled
    bundle: bytes | None = None  # ca.crt clients trust (old + new CA during a rotation)
    ca: pki.KeyPair | None = None  # the CA that issues user certificates (mode Operator)


@dataclass(frozen=True)
class Blocked:
    """The user cannot be made ready now; Ready=False with this reason and message."""

    reason: str
    message: str


@dataclass(frozen=True)
class UserPlan:
    identity: Identity
    token: str | None  # the stored token to keep; None: create one
    cert_reason: str | None  # why a new certificate is issued; None: keep (or none at all)
    issue_certs: bool  # False: token only (the operator holds no CA key)


def blocked(
    user: ShardSetUser, shardset_found: bool, tls: StoreTls, stored: StoredSecret | None
) -> Blocked | None:
    """Why the user cannot be served now, if it cannot."""
    store = user.spec.shard_set
    if not shardset_found:
        return Blocked("ShardSetNotFound", f"no ShardSet {store} in namespace {user.namespace}")
    if tls.mode == "Disabled":
        return Blocked(
            "TlsDisabled",
            f"ShardSet {store} runs with spec.tls.mode Disabled: its nodes authenticate "
            "nobody, so users have no meaning there",
        )
    if tls.bundle is None or (tls.mode == "Operator" and tls.ca is None):
        return Blocked("WaitingForCA", f"the CA of ShardSet {store} is not there yet")
    if stored is not None and user.uid not in stored.owners:
        return Blocked(
            "SecretConflict",
            f"Secret {user.name} exists and is not owned by this ShardSetUser: it is left "
            "alone; delete it or choose another user name",
        )
    return None


def plan_user(
    user: ShardSetUser, names: Names, tls: StoreTls, stored: StoredSecret | None, now: dt.datetime
) -> UserPlan:
    identity = Identity.user(names.store_key, user.name)
    data = stored.data if stored is not None else {}
    token = data.get("token", b"").decode(errors="replace")
    keep_token = token.startswith(TOKEN_PREFIX) and len(token) == TOKEN_LENGTH
    issue = tls.ca is not None
    reason = certificate_reason(data, identity, tls.ca, now) if issue else None
    return UserPlan(identity, token if keep_token else None, reason, issue)


def certificate_reason(
    data: dict[str, bytes], identity: Identity, ca: pki.KeyPair | None, now: dt.datetime
) -> str | None:
    """Why the stored certificate must be replaced; None when it can stay."""
    if not data.get("tls.crt") or not data.get("tls.key"):
        return "no certificate yet"
    try:
        cert = pki.load_certs(data["tls.crt"])[0]
    except pki.PkiError:
        return "the stored certificate does not parse"
    info = pki.info(cert)
    if identity.uri not in info.uris:
        return f"the stored certificate names {', '.join(info.uris) or 'no identity'}"
    if ca is not None and not pki.issued_by(cert, _cas(ca.cert_pem)):
        return "the stored certificate was issued by another CA (the CA was rotated)"
    if now >= info.not_after:
        return "the stored certificate expired"
    if info.due(now):
        return f"the certificate is past 2/3 of its life (expires {info.not_after:%Y-%m-%dT%H:%MZ})"
    return None


def _cas(pem: bytes) -> list[x509.Certificate]:
    return pki.load_certs(pem)[:1]  # the issuing CA is the bundle's first certificate


def record_digest(user: ShardSetUser, token: str, shardset_uid: str) -> str:
    """What identifies the user record written to the store: a change writes it again."""
    record = {
        "role": user.spec.role.value,
        "prefixes": list(user.spec.prefixes),
        "token": token_digest(token),
        "shardset": shardset_uid,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def put_due(user: ShardSetUser, digest: str, now: dt.datetime) -> bool:
    """Whether to write the user record (PutUser) now."""
    status = user.status
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions)
    if not ready or status.applied_digest != digest or status.applied_at is None:
        return True
    return now - status.applied_at >= REPUT_AFTER
