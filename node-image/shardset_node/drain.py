"""Graceful shutdown: hand every group this node leads to an up-to-date voter before the
process stops, so its shards change leader by transfer (no election timeout gap)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog

from shardset_node.core import Node
from shardset_node.replication.group import ReplicaGroup
from shardset_raft import Role

log = structlog.get_logger(__name__)


def pick_transferee(me: int, voters: frozenset[int], match: Mapping[int, int]) -> int | None:
    """The voter (not `me`) with the most of the log; ties go to the lowest id."""
    candidates = [(match.get(v, 0), -v) for v in voters if v != me]
    if not candidates:
        return None
    _, neg = max(candidates)
    return -neg


def _led(node: Node) -> list[ReplicaGroup]:
    return [g for _, g in sorted(node.host.groups.items()) if g.raft.role == Role.LEADER]


async def drain_leadership(node: Node, timeout: float, poll: float = 0.1) -> bool:
    """Transfer leadership of every group `node` leads, waiting (at most `timeout` s)
    until it leads none. True if it got there."""
    started = time.monotonic()
    asked: dict[int, int] = {}  # group -> transferee last asked
    led = _led(node)
    log.info("drain started", node=node.id, leads=[g.id for g in led], timeout_s=timeout)
    while led:
        if time.monotonic() - started > timeout:
            log.warning(
                "drain timed out; stopping while still leading",
                node=node.id,
                leads=[g.id for g in led],
            )
            return False
        for g in led:
            raft = g.raft
            if raft.lead_transferee:
                continue  # a transfer is under way (the core aborts it after a timeout)
            match = {p: pr.match for p, pr in raft.progress.items()}
            target = pick_transferee(node.id, raft.conf.voters, match)
            if target is None:
                continue  # the only voter: nobody to hand it to
            if asked.get(g.id) != target:
                log.info("transferring leadership", node=node.id, group=g.id, to=target)
            asked[g.id] = target
            g.transfer_leadership(target).add_done_callback(_ignore_outcome)
        await asyncio.sleep(poll)
        led = _led(node)
        if all(len(g.raft.conf.voters) <= 1 for g in led):
            break
    still = [g.id for g in led]
    elapsed = round(time.monotonic() - started, 3)
    log.info("drain complete", node=node.id, still_leads=still, seconds=elapsed)
    return not still


def _ignore_outcome(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a refused transfer is simply retried by the loop
