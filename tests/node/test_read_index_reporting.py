"""A read's index is the index of the state it returned (issue 15).

After a kill -9 the engine can hold entries past Raft's applied index (commit-only
hard states are not synced; ShardMachine.apply skips what the engine holds): an
eventual read once claimed index N and returned the value acknowledged at N+1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from shardset_node.consistency import ReadPolicy
from shardset_node.reads import ReadPath
from shardset_node.storage.kvengine import KvEngine
from shardset_proto.commands import Put


def test_an_eventual_read_reports_the_engines_index_when_it_is_ahead(tmp_path: Path) -> None:
    engine = KvEngine(tmp_path / "kv.sqlite3")
    engine.apply(1, 5, [Put(b"k", b"v5")])  # applied before the crash
    # Raft restarted from a hard state whose commit (4) lags what the engine holds.
    group = SimpleNamespace(id=1, raft=SimpleNamespace(applied=4))
    node = SimpleNamespace(
        id=1,
        engine=engine,
        group_for_key=lambda key, path: group,
        meta=SimpleNamespace(map=SimpleNamespace(epoch=1)),
    )
    reads = ReadPath(node, None, ReadPolicy("eventual", None))  # type: ignore[arg-type]
    answer = asyncio.run(reads.get(b"k", "eventual", None, 0, "/v1/kv/k"))
    assert answer["value"] == b"v5"
    assert answer["index"] == 5
    engine.close()
