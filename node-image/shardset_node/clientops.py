"""The key-value operations the wire server serves, as one object (writes from kv.py,
reads from reads.py). Temporary: the wire server takes this until it is changed to take
KvWrites and ReadPath directly, as the HTTP API does (wire.py belongs to the contract
work of issue 14 until then)."""

from __future__ import annotations

from typing import Any

from shardset_node.kv import KvWrites
from shardset_node.reads import ReadPath


class ClientOps:
    def __init__(self, node_id: int, kv: KvWrites, reads: ReadPath) -> None:
        self.id = node_id
        self.put = kv.put
        self.delete = kv.delete
        self.cas = kv.cas
        self.reads = reads

    async def get(
        self, key: bytes, mode: str | None, staleness_ms: int | None, token: int, path: str
    ) -> dict[str, Any]:
        return await self.reads.get(key, mode, staleness_ms, token, path)
