"""The state machines the node's Raft groups drive.

`ShardMachine` applies key-value commands of one shard to the KV engine; the
engine stores the shard's applied index in the same transaction as the data,
so after a restart entries the engine already holds are skipped, not applied
twice. `MetaMachine` holds the shard map of the metadata group.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shardset_node.commands import Command, decode_command
from shardset_node.kvengine import KvEngine
from shardset_node.shardmap import ShardMap
from shardset_raft import Entry, EntryType, Snapshot


class ShardMachine:
    def __init__(self, engine: KvEngine, shard: int, scratch: Path) -> None:
        self.engine = engine
        self.shard = shard
        self.scratch = scratch

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        done = self.engine.applied_index(self.shard)
        results: list[object] = [None] * len(entries)
        todo: list[tuple[int, Command]] = []
        for pos, e in enumerate(entries):
            if e.index <= done or e.type != EntryType.NORMAL or not e.data:
                continue
            todo.append((pos, decode_command(e.data)))
        last = entries[-1].index
        if last <= done:
            return results
        applied = self.engine.apply(self.shard, last, [cmd for _, cmd in todo])
        for (pos, _), result in zip(todo, applied, strict=True):
            results[pos] = result
        return results

    def snapshot(self) -> bytes:
        path = self._scratch_file()
        try:
            self.engine.export_snapshot(self.shard, path)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def restore(self, snapshot: Snapshot) -> None:
        if self.engine.applied_index(self.shard) >= snapshot.meta.index > 0:
            return  # the engine already holds this state (a restart, not a transfer)
        if not snapshot.data:
            self.engine.drop_shard(self.shard)
            return
        path = self._scratch_file()
        try:
            path.write_bytes(snapshot.data)
            self.engine.import_snapshot(self.shard, path)
        finally:
            path.unlink(missing_ok=True)

    def _scratch_file(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"shard-{self.shard}-", dir=self.scratch)
        os.close(fd)
        return Path(name)


class MetaMachine:
    """The shard map, changed only by compare-and-set on its epoch."""

    def __init__(self, initial: ShardMap) -> None:
        self.map = initial

    def apply(self, entries: Sequence[Entry]) -> list[object]:
        results: list[object] = []
        for e in entries:
            if e.type != EntryType.NORMAL or not e.data:
                results.append(None)
                continue
            change = json.loads(e.data)
            new = ShardMap.decode(json.dumps(change["map"]).encode())
            if change["expect_epoch"] == self.map.epoch and new.epoch == self.map.epoch + 1:
                self.map = new
                results.append({"ok": True, "epoch": new.epoch})
            else:
                results.append({"ok": False, "epoch": self.map.epoch})
        return results

    def snapshot(self) -> bytes:
        return self.map.encode()

    def restore(self, snapshot: Snapshot) -> None:
        if snapshot.data:
            self.map = ShardMap.decode(snapshot.data)

    @staticmethod
    def change(current: ShardMap, new: ShardMap) -> bytes:
        return json.dumps({"expect_epoch": current.epoch, "map": json.loads(new.encode())}).encode()
