"""An in-memory store that answers the operator's node calls as real nodes do.

It keeps what the operator relies on: which node leads each shard, the voters and
learners of each group, which nodes hold a copy, the shard map's node list and replica
lists. Admin calls made at the wrong node fail the way nodes fail them (a 307 to the
leader, a 409 for a conf change that is not allowed), and every change is checked
against the invariants the operator must keep: a shard never has fewer voters than
the replication factor, and a leader is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shardset_operator.naming import Names
from shardset_operator.nodeclient import NodeCallError
from shardset_proto.placement import initial_replicas, initial_slots

CATCH_UP_POLLS = 2  # status polls of the leader a new learner stays behind


@dataclass
class Group:
    leader: int
    voters: set[int]
    learners: set[int] = field(default_factory=set)
    hosts: set[int] = field(default_factory=set)
    behind: dict[int, int] = field(default_factory=dict)  # learner -> polls left


class FakeStore:
    def __init__(self, nodes: int, shards: int, rf: int, names: Names) -> None:
        self.names = names
        self.rf = rf
        self.members = set(range(1, nodes + 1))
        self.running = set(range(1, nodes + 1))  # pods whose node process answers
        self.epoch = 1
        self.meta_leader = 1
        self.meta_voters = set(range(1, min(nodes, 5) + 1))
        self.meta_learners: set[int] = set()
        self.meta_hosts = set(range(1, nodes + 1))
        placed = initial_replicas([r.shard for r in initial_slots(shards)], list(self.members), rf)
        self.slots = [[r.start, r.end, r.shard] for r in initial_slots(shards)]
        self.groups = {s: Group(h[0], set(h), hosts=set(h)) for s, h in placed.items()}
        self.recorded = {s: sorted(h) for s, h in placed.items()}
        self.calls: list[str] = []
        self.fail_after: int | None = None  # raise on the n-th admin call (a crash)
        self.min_voters = rf

    # --- NodeClient ---------------------------------------------------------------
    def _id(self, url: str) -> int:
        prefix = f"http://{self.names.statefulset}-"
        return int(url.removeprefix(prefix).split(".")[0]) + 1

    def _check_up(self, node: int, what: str) -> None:
        if node not in self.running:
            raise NodeCallError(f"{what} at node {node}: ClientConnectorError")

    async def status(self, url: str) -> dict[str, Any]:
        node = self._id(url)
        self._check_up(node, "GET /v1/status")
        groups: dict[str, Any] = {}
        for s, g in self.groups.items():
            if node not in g.hosts:
                continue
            entry: dict[str, Any] = {
                "role": "leader" if g.leader == node else "follower",
                "term": 1,
                "leader": g.leader,
                "voters": sorted(g.voters),
                "learners": sorted(g.learners),
            }
            if g.leader == node:
                entry["followers"] = {
                    str(n): {"lag": 100 if g.behind.get(n, 0) > 0 else 0}
                    for n in g.voters | g.learners
                    if n != node
                }
                for n in list(g.behind):
                    g.behind[n] -= 1
            groups[str(s)] = entry
        if node in self.meta_hosts:
            groups["meta"] = {
                "role": "leader" if node == self.meta_leader else "follower",
                "term": 1,
                "voters": sorted(self.meta_voters),
                "learners": sorted(self.meta_learners),
            }
            if node == self.meta_leader:
                others = (self.meta_voters | self.meta_learners) - {node}
                groups["meta"]["followers"] = {str(n): {"lag": 0} for n in others}
        mode = {"mode": "linearizable", "maxStalenessMs": None}
        return {"node": node, "epoch": self.epoch, "consistency": mode, "groups": groups}

    async def shardmap(self, url: str) -> dict[str, Any]:
        node = self._id(url)
        self._check_up(node, "GET /v1/shardmap")
        return {
            "epoch": self.epoch,
            "slots": self.slots,
            "replicas": {str(s): h for s, h in self.recorded.items()},
            "nodes": {
                str(n): {"peer": self.names.peer_address(n), "api": self.names.api_url(n)}
                for n in sorted(self.members)
            },
        }

    async def set_consistency(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return body

    async def admin(self, url: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        node = self._id(url)
        self._check_up(node, f"POST /v1/admin/{action}")
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise RuntimeError("operator crashed")
            self.fail_after -= 1
        self.calls.append(f"{action} at {node} {body}")
        handler = getattr(self, "_" + action.replace("-", "_"))
        result: dict[str, Any] = handler(node, body)
        self._check_invariants()
        return result

    # --- admin actions ---------------------------------------------------------------
    def _leader_of(self, node: int, shard: int) -> Group:
        g = self.groups[shard]
        if g.leader != node:
            raise NodeCallError("not leader", 307)
        return g

    def _meta(self, node: int) -> None:
        if node != self.meta_leader:
            raise NodeCallError("not the metadata leader", 307)

    def _bump(self) -> None:
        self.epoch += 1

    def _record(self, shard: int) -> None:
        voters = sorted(self.groups[shard].voters)
        if self.recorded[shard] != voters:
            self.recorded[shard] = voters
            self._bump()

    def _create_replica(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        if body["shard"] == 0:
            self.meta_hosts.add(node)
        else:
            self.groups[body["shard"]].hosts.add(node)
        return {}

    def _meta_conf(self, node: int, action: str, target: int) -> dict[str, Any]:
        self._meta(node)
        if action == "promote":
            assert target in self.meta_learners
            self.meta_learners.discard(target)
            self.meta_voters.add(target)
        else:
            assert target != self.meta_leader
            self.meta_voters.discard(target)
            self.meta_learners.discard(target)
        return {}

    def _add_learner(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        g = self._leader_of(node, body["shard"])
        target = body["node"]
        assert target in g.hosts, "a learner is added before it has a replica to receive into"
        if target in g.voters:
            raise NodeCallError("is a voter", 409, "conf_change_rejected")
        if target not in g.learners:
            g.learners.add(target)
            g.behind[target] = CATCH_UP_POLLS
        return {}

    def _promote(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        if body["shard"] == 0:
            return self._meta_conf(node, "promote", body["node"])
        g = self._leader_of(node, body["shard"])
        target = body["node"]
        assert g.behind.get(target, 0) <= 0, "promoted before it caught up"
        g.learners.discard(target)
        g.voters.add(target)
        self._record(body["shard"])
        return {}

    def _remove_replica(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        if body["shard"] == 0:
            return self._meta_conf(node, "remove", body["node"])
        g = self._leader_of(node, body["shard"])
        target = body["node"]
        if target == g.leader:
            raise NodeCallError("is leader", 409, "is_leader")
        g.voters.discard(target)
        g.learners.discard(target)
        self._record(body["shard"])
        return {}

    def _transfer_leader(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        to = body["to"]
        if body["shard"] == 0:
            self._meta(node)
            assert to in self.meta_voters
            self.meta_leader = to
            return {}
        g = self._leader_of(node, body["shard"])
        assert to in g.voters and to in self.running, f"transfer to {to}: not a live voter"
        g.leader = to
        return {}

    def _drop_replica(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        if node in self.recorded[body["shard"]]:
            raise NodeCallError("still a member", 409, "still_member")
        self.groups[body["shard"]].hosts.discard(node)
        return {}

    def _split_shard(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        g = self._leader_of(node, body["shard"])
        new, start, end = body["new_shard"], body["start"], body["end"]
        assert new not in self.groups
        [owned] = [r for r in self.slots if r[2] == body["shard"] and r[0] <= start < end <= r[1]]
        self.slots.remove(owned)
        pieces = [[owned[0], start, owned[2]], [start, end, new], [end, owned[1], owned[2]]]
        self.slots = sorted(self.slots + [p for p in pieces if p[0] < p[1]])
        self.groups[new] = Group(g.leader, set(g.voters), hosts=set(g.voters))
        self.recorded[new] = sorted(g.voters)
        self._bump()
        return {}

    def _record_replicas(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        self._meta(node)
        self.recorded[body["shard"]] = sorted(body["voters"])
        self._bump()
        return {}

    def _add_node(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        self._meta(node)
        assert body["api"] == self.names.api_url(body["node"])
        assert body["node"] in self.meta_hosts, "added before it hosts the metadata group"
        if body["node"] not in self.members:
            self.members.add(body["node"])
            self._bump()
        if body["node"] not in self.meta_voters:
            self.meta_learners.add(body["node"])
        return {}

    def _remove_node(self, node: int, body: dict[str, Any]) -> dict[str, Any]:
        self._meta(node)
        gone = body["node"]
        if any(gone in h for h in self.recorded.values()):
            raise NodeCallError("still holds replicas", 409, "still_holds_replicas")
        if gone == self.meta_leader:
            raise NodeCallError("is leader", 409, "is_leader")
        self.meta_voters.discard(gone)
        self.meta_learners.discard(gone)
        if gone in self.members:
            self.members.discard(gone)
            self._bump()
        return {}

    def lose_volume(self, node: int) -> None:
        """The node's pod comes back on an empty volume: it holds no group at all."""
        for g in self.groups.values():
            g.hosts.discard(node)
            if g.leader == node:
                g.leader = min(g.voters - {node})
        self.meta_hosts.discard(node)
        if self.meta_leader == node:
            self.meta_leader = min(self.meta_voters - {node})

    # --- checks --------------------------------------------------------------------------
    def _check_invariants(self) -> None:
        for s, g in self.groups.items():
            self.min_voters = min(self.min_voters, len(g.voters))
            assert g.leader in g.voters, f"shard {s}: leader {g.leader} is no voter"

    def loads(self) -> dict[int, int]:
        counts = dict.fromkeys(sorted(self.members), 0)
        for g in self.groups.values():
            for n in g.voters:
                counts[n] = counts.get(n, 0) + 1
        return counts

    def leader_loads(self) -> dict[int, int]:
        counts = dict.fromkeys(sorted(self.members), 0)
        for g in self.groups.values():
            counts[g.leader] += 1
        return counts
