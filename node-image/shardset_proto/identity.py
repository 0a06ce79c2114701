"""Who a connection is, and what it may do: the store's identities, roles and actions.

Every certificate a store trusts names one identity in a URI SAN (docs/security.md):

    shardset://<store>/node/<id>      a node of the store (peer port, admin port)
    shardset://<store>/operator       the operator (admin port)
    shardset://<store>/user/<name>    a user (a ShardSetUser, or `shardset local`'s CLI user)

`<store>` is `<namespace>.<name>` in Kubernetes and `local.<name>` for `shardset local`,
so a certificate issued for one store is refused by every other even when two stores
share a CA (cert-manager's common ClusterIssuer). Bearer tokens name a user too: the
node keeps the store's users (role, key prefixes, token digest) in its metadata group.

Authorization is one table, role x action (`ALLOWED`); a user's role and prefixes come
from the store's user table, never from the certificate, so changing or deleting the
user takes effect on its existing certificate at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

SCHEME = "shardset"

# A store key, a user name: DNS-label-like, so they fit a URI path and a Secret name.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
USER_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
_USER = re.compile(USER_NAME_PATTERN)


class IdentityError(ValueError):
    """A certificate or URI names no identity of this store; the message says why."""


class Kind(StrEnum):
    NODE = "node"
    OPERATOR = "operator"
    USER = "user"


class Role(StrEnum):
    READ = "read"
    READWRITE = "readwrite"
    ADMIN = "admin"


class Action(StrEnum):
    KV_READ = "kv.read"  # get, scan
    KV_WRITE = "kv.write"  # put, delete, cas
    STORE_READ = "store.read"  # shard map, status, OpenAPI document
    STORE_ADMIN = "store.admin"  # every POST /v1/admin/<action> (admin port only)
    PEER = "peer"  # Raft traffic on the peer port


# The whole authorization table. Nodes hold PEER and STORE_ADMIN because they call each
# other's admin API (read index, create replica, split); the operator holds what it
# needs to manage the store and read its data for checks; users hold their role's row.
ALLOWED: dict[Role | Kind, frozenset[Action]] = {
    Role.READ: frozenset({Action.KV_READ, Action.STORE_READ}),
    Role.READWRITE: frozenset({Action.KV_READ, Action.KV_WRITE, Action.STORE_READ}),
    Role.ADMIN: frozenset(
        {Action.KV_READ, Action.KV_WRITE, Action.STORE_READ, Action.STORE_ADMIN}
    ),
    Kind.OPERATOR: frozenset(
        {Action.KV_READ, Action.KV_WRITE, Action.STORE_READ, Action.STORE_ADMIN}
    ),
    Kind.NODE: frozenset(
        {Action.KV_READ, Action.KV_WRITE, Action.STORE_READ, Action.STORE_ADMIN, Action.PEER}
    ),
}


def check_store(store: str) -> str:
    if not _NAME.match(store):
        raise IdentityError(f"store {store!r} is not a valid store key (<namespace>.<name>)")
    return store


def check_user(name: str) -> str:
    if not _USER.match(name):
        raise IdentityError(
            f"user name {name!r} must be 1-63 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Identity:
    store: str
    kind: Kind
    name: str = ""  # the node id (decimal) or the user name; "" for the operator

    @staticmethod
    def node(store: str, node_id: int) -> Identity:
        if node_id <= 0:
            raise IdentityError(f"node id must be positive, not {node_id}")
        return Identity(check_store(store), Kind.NODE, str(node_id))

    @staticmethod
    def operator(store: str) -> Identity:
        return Identity(check_store(store), Kind.OPERATOR)

    @staticmethod
    def user(store: str, name: str) -> Identity:
        return Identity(check_store(store), Kind.USER, check_user(name))

    @property
    def node_id(self) -> int:
        if self.kind != Kind.NODE:
            raise IdentityError(f"{self.uri} is not a node")
        return int(self.name)

    @property
    def uri(self) -> str:
        tail = self.kind.value if self.kind == Kind.OPERATOR else f"{self.kind}/{self.name}"
        return f"{SCHEME}://{self.store}/{tail}"

    def __str__(self) -> str:
        return self.uri


def parse_uri(uri: str) -> Identity:
    """The identity a `shardset://` URI names; IdentityError naming what is wrong."""
    prefix = f"{SCHEME}://"
    if not uri.startswith(prefix):
        raise IdentityError(f"{uri!r} is not a {prefix} identity")
    store, _, path = uri[len(prefix) :].partition("/")
    parts = path.split("/")
    if parts == [Kind.OPERATOR.value]:
        return Identity.operator(store)
    if len(parts) != 2:
        raise IdentityError(f"{uri!r}: expected node/<id>, operator or user/<name>")
    kind, name = parts
    if kind == Kind.NODE.value:
        if not name.isdigit():
            raise IdentityError(f"{uri!r}: node id {name!r} is not a number")
        return Identity.node(store, int(name))
    if kind == Kind.USER.value:
        return Identity.user(store, name)
    raise IdentityError(f"{uri!r}: unknown identity kind {kind!r}")


def identity_of(uris: list[str], store: str) -> Identity:
    """The one identity of `store` among a certificate's URI SANs.

    Raises IdentityError naming the reason: no shardset identity at all, one issued
    for another store, or more than one for this store (ambiguous, so refused)."""
    found: list[Identity] = []
    others: list[Identity] = []
    for uri in uris:
        if not uri.startswith(f"{SCHEME}://"):
            continue
        ident = parse_uri(uri)
        (found if ident.store == store else others).append(ident)
    if len(found) == 1:
        return found[0]
    if found:
        raise IdentityError(f"certificate names {len(found)} identities of store {store}")
    if others:
        raise IdentityError(f"certificate was issued for store {others[0].store}, not {store}")
    raise IdentityError("certificate names no shardset:// identity (URI SAN)")


def allowed(who: Role | Kind, action: Action) -> bool:
    return action in ALLOWED[who]


# --- key-prefix scopes ------------------------------------------------------------
def key_in_scope(prefixes: tuple[str, ...], key: str) -> bool:
    """A user with prefixes may touch only keys starting with one of them (no prefixes:
    every key)."""
    return not prefixes or any(key.startswith(p) for p in prefixes)


def range_in_scope(prefixes: tuple[str, ...], start: str, end: str | None) -> bool:
    """A scan of [start, end) stays inside one prefix: it starts at or after the prefix
    and ends at or before the first key past it (end None is the end of the key space)."""
    if not prefixes:
        return True
    for p in prefixes:
        if not start.startswith(p) and start != p:
            continue
        upper = prefix_end(p)
        if end is not None and (upper is None or end <= upper):
            return True
    return False


def prefix_end(prefix: str) -> str | None:
    """The first string greater than every string with `prefix` (None: no such string)."""
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            chars[-1] = chr(last + 1)
            return "".join(chars)
        chars.pop()
    return None


# --- bearer tokens ------------------------------------------------------------------
TOKEN_PREFIX = "sst_"


def token_digest(token: str) -> str:
    """What a node keeps of a token: its SHA-256 (tokens are 256 random bits, so a fast
    hash is enough; a stolen user table does not give the tokens away)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(token), digest)
