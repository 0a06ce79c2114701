"""A node whose Raft loop dies says so at once and exits (issue 15: "A dead Raft loop
looks alive"), and a committed entry that cannot be applied stops the node with one
clear error naming the shard and the index, the same way after every restart."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from shardset_node.config import NodeConfig
from shardset_node.main import FATAL_EXIT, NodeProcess, assemble
from shardset_node.replication.host import LoopFailed
from shardset_operator.clients.nodeclient import NodeCallError, NodeClient
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_raft import Role

BAD_COMMAND = b"\xff\xfe not a command"  # committed, but no command decodes from it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _single_node_map(peer: int, api: int) -> ShardMap:
    address = NodeAddress(f"127.0.0.1:{peer}", f"http://127.0.0.1:{api}")
    return bootstrap_map({1: address}, 1, 1)


async def _leading(process: NodeProcess, timeout: float = 20.0) -> None:
    groups = process.node.host.groups
    async with asyncio.timeout(timeout):
        while not groups or any(g.raft.role != Role.LEADER for g in groups.values()):
            await asyncio.sleep(0.02)


async def _answers(client: TestClient[Any, Any]) -> dict[str, tuple[int, dict[str, Any]]]:
    found = {}
    for name, method, url in [
        ("healthz", "GET", "/healthz"),
        ("readyz", "GET", "/readyz"),
        ("status", "GET", "/v1/status"),
        ("shardmap", "GET", "/v1/shardmap"),
        ("put", "PUT", "/v1/kv/k2"),
        ("eventual", "GET", "/v1/kv/k1?consistency=eventual"),
        ("linearizable", "GET", "/v1/kv/k1?consistency=linearizable"),
    ]:
        r = await client.request(method, url, data=b"v" if method == "PUT" else None)
        found[name] = (r.status, dict(await r.json()))
    return found


async def _operator_counts_it_unavailable(url: str) -> None:
    """The operator's status call fails (observe.poll_nodes then records the node as not
    answering, NodeViews.answering leaves it out), naming why."""
    async with aiohttp.ClientSession() as session:
        try:
            await NodeClient(session).status(url)
        except NodeCallError as e:
            assert (e.status, e.code) == (503, "node_failed"), e
        else:
            raise AssertionError("a node whose Raft loop died still served its status")


def test_a_dead_loop_fails_health_and_answers_503_at_once(tmp_path: Path) -> None:
    cfg = NodeConfig(1, tmp_path, "127.0.0.1", _free_port(), _single_node_map(1, 2), fsync=False)

    async def run() -> tuple[dict[str, tuple[int, dict[str, Any]]], BaseException | None, int]:
        process = assemble(cfg)
        fatal: list[BaseException] = []
        process.node.host.on_fatal = fatal.append
        await process.start()
        try:
            async with TestClient(TestServer(process.app())) as client:
                await _leading(process)
                assert (await client.put("/v1/kv/k1", data=b"v1")).status == 200
                g = process.node.host.groups[1]
                index = g.raft.log.last_index() + 1
                outcome: BaseException | None = None
                try:
                    await asyncio.wait_for(g.propose(BAD_COMMAND), 5.0)
                except LoopFailed as e:
                    outcome = e
                assert fatal, "the host did not report its death"
                await _operator_counts_it_unavailable(str(client.make_url("")).rstrip("/"))
                return await _answers(client), outcome, index
        finally:
            await process.stop()

    with capture_logs() as logs:
        answers, outcome, index = asyncio.run(run())
    assert isinstance(outcome, LoopFailed)  # the waiting client is answered, not left
    for probe in ("healthz", "readyz"):
        status, body = answers[probe]
        assert status == 503, (probe, body)
        assert f"committed entry {index}" in " ".join(body["problems"])
    # Nothing the node holds is served any more: not its (stale) roles, not its data.
    for request in ("status", "shardmap", "put", "eventual", "linearizable"):
        status, body = answers[request]
        assert (status, body["error"]) == (503, "node_failed"), (request, body)
        assert f"shard 1: committed entry {index} cannot be applied" in body["message"]
    failed = [e for e in logs if e["event"] == "raft_loop_failed"]
    assert len(failed) == 1
    assert (failed[0]["group"], failed[0]["index"]) == (1, index)


def test_an_entry_that_cannot_be_applied_stops_the_process_every_time(tmp_path: Path) -> None:
    """The bad entry is committed in the log: each start fails at it, the same way, with
    exit code 70 and one `node_fatal` line naming the shard and the index."""
    peer, api = _free_port(), _free_port()
    boot = _single_node_map(peer, api)
    cfg = NodeConfig(1, tmp_path / "data", "127.0.0.1", peer, boot, fsync=True)

    async def commit_bad_entry() -> int:
        process = assemble(cfg)
        process.node.host.on_fatal = lambda _: None
        await process.start()
        try:
            await _leading(process)
            g = process.node.host.groups[1]
            index = g.raft.log.last_index() + 1
            fut = g.propose(BAD_COMMAND)
            await asyncio.wait([fut], timeout=5.0)
            return index
        finally:
            await process.stop()

    index = asyncio.run(commit_bad_entry())
    (tmp_path / "boot.json").write_bytes(boot.encode())
    cmd = [
        sys.executable, "-m", "shardset_node", "--id", "1",
        "--data-dir", str(tmp_path / "data"), "--peer", f"127.0.0.1:{peer}",
        "--api", f"127.0.0.1:{api}", "--bootstrap", str(tmp_path / "boot.json"),
        "--fatal-grace-s", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _ in range(2):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == FATAL_EXIT, done.stderr[-2000:]
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        fatal = [e for e in events if e["event"] == "node_fatal"]
        assert len(fatal) == 1, done.stderr[-2000:]
        assert f"shard 1: committed entry {index} cannot be applied" in fatal[0]["error"]
        assert "Traceback" not in done.stderr
