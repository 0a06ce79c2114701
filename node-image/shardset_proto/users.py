"""The store's users: what the metadata group keeps and every node checks requests against.

A user is a name, a role (shardset_proto.identity.Role), optional key prefixes and the
SHA-256 of its bearer token. Kept in the metadata Raft group (like etcd's auth store),
so a change (PutUser, DeleteUser) reaches every node in one commit: deleting a user
revokes its token and its certificate within seconds, with no certificate revocation
list to distribute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from shardset_proto.identity import Role, check_user, token_digest


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    prefixes: tuple[str, ...] = ()
    token_sha256: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role.value,
            "prefixes": list(self.prefixes),
            "token_sha256": self.token_sha256,
        }

    @staticmethod
    def from_json(raw: dict[str, object]) -> User:
        prefixes = raw.get("prefixes") or []
        digest = raw.get("token_sha256")
        if not isinstance(prefixes, list) or not (digest is None or isinstance(digest, str)):
            raise ValueError(f"malformed user record: {raw!r}")
        return User(
            name=check_user(str(raw["name"])),
            role=Role(str(raw["role"])),
            prefixes=tuple(str(p) for p in prefixes),
            token_sha256=digest,
        )


@dataclass(frozen=True)
class UserTable:
    """Immutable: a change makes a new table (the metadata machine swaps it whole, so a
    request checked against one table never sees half a change)."""

    users: dict[str, User] = field(default_factory=dict)
    # Token digest -> user, built once per table (every token request looks one up).
    _by_digest: dict[str, User] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {u.token_sha256: u for u in self.users.values() if u.token_sha256}
        object.__setattr__(self, "_by_digest", index)

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def by_token(self, token: str) -> User | None:
        return self._by_digest.get(token_digest(token))

    def holder_of(self, digest: str) -> User | None:
        """The user whose token has SHA-256 `digest`, if any (a digest names one user)."""
        return self._by_digest.get(digest)

    def put(self, user: User) -> UserTable:
        return UserTable({**self.users, user.name: user})

    def delete(self, name: str) -> UserTable:
        return UserTable({n: u for n, u in self.users.items() if n != name})

    def encode(self) -> list[dict[str, object]]:
        return [self.users[n].to_json() for n in sorted(self.users)]

    @staticmethod
    def decode(raw: object) -> UserTable:
        if not isinstance(raw, list):
            raise ValueError("a user table is a JSON list of users")
        users = [User.from_json(u) for u in raw]
        return UserTable({u.name: u for u in users})

    def dumps(self) -> bytes:
        return json.dumps(self.encode(), sort_keys=True).encode()
