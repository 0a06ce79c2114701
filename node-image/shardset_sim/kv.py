"""The replicated state machine the simulator runs on every node: a tiny KV store."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    op_id: int
    kind: str  # put | delete | cas
    key: str
    value: str | None = None
    expected: str | None = None

    def encode(self) -> bytes:
        return json.dumps([self.op_id, self.kind, self.key, self.value, self.expected]).encode()

    @staticmethod
    def decode(data: bytes) -> Command:
        op_id, kind, key, value, expected = json.loads(data)
        return Command(op_id, kind, key, value, expected)


class KvMachine:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def apply(self, index: int, cmd: Command) -> object:
        """Apply one command; returns what the client is told (cas: success)."""
        self.applied = index
        current = self.data.get(cmd.key)
        if cmd.kind == "put":
            assert cmd.value is not None
            self.data[cmd.key] = cmd.value
            return None
        if cmd.kind == "delete":
            self.data.pop(cmd.key, None)
            return None
        if cmd.kind == "cas":
            if current != cmd.expected:
                return False
            if cmd.value is None:
                self.data.pop(cmd.key, None)
            else:
                self.data[cmd.key] = cmd.value
            return True
        raise ValueError(f"unknown command kind {cmd.kind!r}")

    def snapshot(self) -> bytes:
        return json.dumps(self.data, sort_keys=True).encode()

    def restore(self, index: int, data: bytes) -> None:
        self.data = json.loads(data) if data else {}
        self.applied = index
