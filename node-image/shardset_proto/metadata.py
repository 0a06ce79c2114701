"""What the metadata group's log and snapshots hold: shard map changes, user changes,
and the snapshot of both. The node's MetaMachine applies them; peer_checks checks them
on receipt, so both read them with these functions.

Entries are JSON objects. A map change is `{"expect_epoch": E, "map": {...}}` (a
compare-and-set on the map's epoch), exactly as before users existed. A user change
(issue 16) carries an `op`: `{"op": "put-user", "user": {...}}` or
`{"op": "delete-user", "name": "..."}`; a map change never has one.

A snapshot is the encoded shard map alone while the store has no users: the format
every store written before issue 16 has on disk, so those snapshots and a store that
never defines a user read and write the same bytes as before. With users it is
`{"format": 2, "map": {...}, "users": [...]}`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shardset_proto.identity import Role, check_user
from shardset_proto.shardmap import ShardMap
from shardset_proto.users import User, UserTable

PUT_USER = "put-user"
DELETE_USER = "delete-user"
SNAPSHOT_FORMAT = 2
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_PREFIXES = 64


@dataclass(frozen=True)
class MapChange:
    expect_epoch: int
    map: ShardMap


@dataclass(frozen=True)
class PutUserChange:
    user: User


@dataclass(frozen=True)
class DeleteUserChange:
    name: str


MetaChange = MapChange | PutUserChange | DeleteUserChange


def encode_map_change(current: ShardMap, new: ShardMap) -> bytes:
    return json.dumps({"expect_epoch": current.epoch, "map": json.loads(new.encode())}).encode()


def encode_put_user(user: User) -> bytes:
    return json.dumps({"op": PUT_USER, "user": user.to_json()}, sort_keys=True).encode()


def encode_delete_user(name: str) -> bytes:
    return json.dumps({"op": DELETE_USER, "name": name}, sort_keys=True).encode()


def decode_change(data: bytes) -> MetaChange:
    """One metadata entry; ValueError (or TypeError, KeyError) naming what is wrong."""
    doc = _object(json.loads(data), "a metadata entry")
    op = doc.get("op")
    if op is None:
        epoch = doc["expect_epoch"]
        if type(epoch) is not int:
            raise ValueError("a map change needs an integer expect_epoch")
        return MapChange(epoch, ShardMap.decode(json.dumps(doc["map"]).encode()))
    if op == PUT_USER:
        return PutUserChange(decode_user(doc["user"]))
    if op == DELETE_USER:
        name = doc["name"]
        if not isinstance(name, str):
            raise ValueError("a delete-user entry names the user as a string")
        return DeleteUserChange(check_user(name))
    raise ValueError(f"unknown metadata entry op {op!r:.40}")


def decode_user(raw: object) -> User:
    """A user record, every field checked (a record the node would not have written is
    refused: it must not reach the table every request is checked against)."""
    doc = _object(raw, "a user record")
    name, role, prefixes = doc["name"], doc["role"], doc.get("prefixes", [])
    digest = doc.get("token_sha256")
    if not isinstance(name, str) or not isinstance(role, str):
        raise ValueError("a user record's name and role are strings")
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError("a user record's prefixes are a list of non-empty strings")
    if len(prefixes) > MAX_PREFIXES:
        raise ValueError(f"a user record has more than {MAX_PREFIXES} prefixes")
    if digest is not None and not (isinstance(digest, str) and _DIGEST.match(digest)):
        raise ValueError("a user record's token_sha256 is 64 lowercase hex digits or null")
    return User(check_user(name), Role(role), tuple(prefixes), digest)


def encode_snapshot(shard_map: ShardMap, users: UserTable) -> bytes:
    if not users.users:
        return shard_map.encode()  # the format from before issue 16 (see the module doc)
    doc = {
        "format": SNAPSHOT_FORMAT,
        "map": json.loads(shard_map.encode()),
        "users": users.encode(),
    }
    return json.dumps(doc, sort_keys=True).encode()


def decode_snapshot(data: bytes) -> tuple[ShardMap, UserTable]:
    """The map and the users of a metadata snapshot, in either format."""
    doc = _object(json.loads(data), "a metadata snapshot")
    if "format" not in doc:
        return ShardMap.decode(data), UserTable()
    if doc["format"] != SNAPSHOT_FORMAT:
        raise ValueError(f"metadata snapshot format {doc['format']!r:.20} is not supported")
    raw_users = doc["users"]
    if not isinstance(raw_users, list):
        raise ValueError("a metadata snapshot's users are a list")
    users = [decode_user(u) for u in raw_users]
    if len({u.name for u in users}) != len(users):
        raise ValueError("a metadata snapshot names a user twice")
    return ShardMap.decode(json.dumps(doc["map"]).encode()), UserTable({u.name: u for u in users})


def _object(raw: object, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{what} is a JSON object, not {type(raw).__name__}")
    return raw
