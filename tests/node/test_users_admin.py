"""The put-user and delete-user admin actions (issue 16) on a real node: a bad body is a
400 naming the field, the actions are idempotent and answer the count of users, the
node's `users` (what the front ends authenticate against) follows them, a token held by
another user is a 409, a non-leader redirects to the leader's admin API, and a user
entry that cannot be applied stops the node like any other unappliable entry."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shardset_node.config import META_GROUP, NodeConfig
from shardset_node.core import Node
from shardset_node.main import NodeProcess, assemble
from shardset_node.replication.host import LoopFailed
from shardset_proto.errors import ApiError
from shardset_proto.identity import Role, token_digest
from shardset_proto.shardmap import NodeAddress, bootstrap_map
from shardset_raft import Role as RaftRole

DIGEST = token_digest("sst_alice")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path) -> NodeConfig:
    peer = _free_port()
    boot = bootstrap_map({1: NodeAddress(f"127.0.0.1:{peer}", "http://127.0.0.1:1")}, 1, 1)
    return NodeConfig(1, tmp_path, "127.0.0.1", peer, boot, fsync=False)


def _post_unstarted(tmp_path: Path, action: str, body: object) -> tuple[int, dict[str, Any]]:
    async def run() -> tuple[int, dict[str, Any]]:
        process = assemble(_config(tmp_path))
        try:
            async with TestClient(TestServer(process.app())) as client:
                r = await client.post(f"/v1/admin/{action}", json=body)
                return r.status, dict(await r.json())
        finally:
            process.node.engine.close()  # never started: only the engine is open

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("put-user", {"role": "read"}, "name"),
        ("put-user", {"name": "alice"}, "role"),
        ("put-user", {"name": "Alice Smith", "role": "read"}, "name"),
        ("put-user", {"name": "alice", "role": "root"}, "role"),
        ("put-user", {"name": "alice", "role": "read", "token_sha256": "sst_x"}, "token_sha256"),
        ("put-user", {"name": "alice", "role": "read", "prefixes": [""]}, "prefixes.0"),
        ("put-user", {"name": "alice", "role": "read", "prefixes": "app/"}, "prefixes"),
        ("delete-user", {}, "name"),
        ("delete-user", {"name": 7}, "name"),
    ],
)
def test_a_bad_user_body_is_400_naming_the_field(
    tmp_path: Path, action: str, body: dict[str, Any], field: str
) -> None:
    status, answer = _post_unstarted(tmp_path, action, body)
    assert status == 400, answer
    assert answer["error"] in ("missing_field", "bad_field")
    assert answer["field"] == field


async def _leading(process: NodeProcess, timeout: float = 20.0) -> None:
    groups = process.node.host.groups
    async with asyncio.timeout(timeout):
        while not groups or any(g.raft.role != RaftRole.LEADER for g in groups.values()):
            await asyncio.sleep(0.02)


def test_put_and_delete_user_on_the_metadata_leader(tmp_path: Path) -> None:
    async def run() -> list[tuple[int, dict[str, Any]]]:
        process = assemble(_config(tmp_path))
        await process.start()
        node = process.node
        answers = []
        try:
            async with TestClient(TestServer(process.app())) as client:
                await _leading(process)

                async def post(action: str, body: dict[str, Any]) -> None:
                    r = await client.post(f"/v1/admin/{action}", json=body)
                    answers.append((r.status, dict(await r.json())))

                alice = {"name": "alice", "role": "readwrite", "prefixes": ["app/"]}
                await post("put-user", {**alice, "token_sha256": DIGEST})
                assert node.users.by_token("sst_alice") is not None
                await post("put-user", {**alice, "token_sha256": DIGEST})
                await post("put-user", {"name": "mallory", "role": "admin", "token_sha256": DIGEST})
                await post("put-user", {"name": "bob", "role": "read"})
                user = node.users.get("alice")
                assert user is not None and (user.role, user.prefixes) == (
                    Role.READWRITE,
                    ("app/",),
                )
                await post("delete-user", {"name": "alice"})
                assert node.users.get("alice") is None
                assert node.users.by_token("sst_alice") is None
                await post("delete-user", {"name": "alice"})
                metrics = await (await client.get("/metrics")).text()
                assert "shardset_users 1.0" in metrics  # bob: a count, and nothing else
                assert "bob" not in metrics
        finally:
            await process.stop()
        return answers

    answers = asyncio.run(run())
    assert answers[0] == (200, {"ok": True, "name": "alice", "users": 1, "changed": True})
    assert answers[1] == (200, {"ok": True, "name": "alice", "users": 1, "changed": False})
    status, refused = answers[2]
    assert (status, refused["error"], refused["holder"]) == (409, "token_in_use", "alice")
    assert answers[3] == (200, {"ok": True, "name": "bob", "users": 2, "changed": True})
    assert answers[4] == (200, {"ok": True, "name": "alice", "users": 1, "changed": True})
    assert answers[5] == (200, {"ok": True, "name": "alice", "users": 1, "changed": False})


def test_users_survive_a_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path)

    async def start_put_stop(put: bool) -> list[str]:
        process = assemble(cfg)
        await process.start()
        try:
            await _leading(process)
            if put:
                async with TestClient(TestServer(process.app())) as client:
                    body = {"name": "alice", "role": "read", "token_sha256": DIGEST}
                    assert (await client.post("/v1/admin/put-user", json=body)).status == 200
            return sorted(process.node.users.users)
        finally:
            await process.stop()

    assert asyncio.run(start_put_stop(True)) == ["alice"]
    assert asyncio.run(start_put_stop(False)) == ["alice"]  # replayed from the log


def test_a_non_leader_redirects_user_changes_to_the_leaders_admin_api(tmp_path: Path) -> None:
    nodes = {
        n: NodeAddress(
            f"127.0.0.1:{7000 + n}",
            f"https://10.0.0.{n}:8000",
            admin=f"https://10.0.0.{n}:8001",
            wire=f"10.0.0.{n}:7001",
        )
        for n in (1, 2, 3)
    }
    boot = bootstrap_map(nodes, 1, 3)
    node = Node(NodeConfig(1, tmp_path, "127.0.0.1", 0, boot, fsync=False))
    try:
        admin = node.redirect(META_GROUP, 2, "/v1/admin/put-user")
        proposal = node.redirect(META_GROUP, 2, "")  # leadership lost while proposing
        client = node.redirect(1, 2, "/v1/kv/k")
        holder = next(n for n in boot.replicas[1] if n != 1)  # another holder, never itself
        with pytest.raises(ApiError) as elsewhere:  # not started: it hosts no replica yet
            node.group(1, "/v1/admin/transfer-leader")
    finally:
        node.engine.close()
    assert (admin.status, admin.code) == (307, "not_leader")
    assert admin.location == "https://10.0.0.2:8001/v1/admin/put-user"
    assert admin.extra["leader_url"] == "https://10.0.0.2:8001"  # the operator follows it
    assert proposal.extra["leader_url"] == "https://10.0.0.2:8001"
    assert client.location == "https://10.0.0.2:8000/v1/kv/k"  # clients: the API
    assert elsewhere.value.extra["leader_url"] == f"https://10.0.0.{holder}:8001"


def test_a_user_entry_that_cannot_be_applied_stops_the_node(tmp_path: Path) -> None:
    async def run() -> tuple[BaseException | None, BaseException | None]:
        process = assemble(_config(tmp_path))
        process.node.host.on_fatal = lambda _: None
        await process.start()
        try:
            await _leading(process)
            meta = process.node.host.groups[META_GROUP]
            bad = json.dumps({"op": "put-user", "user": {"name": "x", "role": "root"}})
            outcome: BaseException | None = None
            try:
                await asyncio.wait_for(meta.propose(bad.encode()), 5.0)
            except LoopFailed as e:
                outcome = e
            return outcome, process.node.host.failure
        finally:
            await process.stop()

    outcome, failure = asyncio.run(run())
    assert isinstance(outcome, LoopFailed)
    assert failure is not None
    assert "the metadata group: committed entry 2 cannot be applied" in str(failure)
