"""The node process: its command line, and the composition root that builds a node
from its parts (core, peer client, reads, writes, admin actions, front ends, metrics)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from shardset_node.admin.dispatch import Admin
from shardset_node.config import NodeConfig
from shardset_node.consistency import ReadPolicy, policy_from_body
from shardset_node.core import Node
from shardset_node.drain import drain_leadership
from shardset_node.frontends.http import build_app, runner
from shardset_node.frontends.wire import WireServer
from shardset_node.kv import KvWrites
from shardset_node.metrics import NodeMetrics
from shardset_node.peers.client import PeerClient
from shardset_node.reads import ReadPath
from shardset_proto.commands import MAX_VALUE_BYTES
from shardset_proto.consistency import MODES
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap


def configure_logging(fmt: str) -> None:
    """JSON lines in containers (the default), readable lines for people."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host, int(port)


_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-(?P<ordinal>[0-9]+)$")


def id_from_hostname(hostname: str) -> int:
    """A StatefulSet pod `<name>-<ordinal>` is node ordinal + 1 (node ids are positive)."""
    m = _POD_NAME.match(hostname.split(".", 1)[0])
    if m is None:
        raise SystemExit(
            f"--id-from-hostname: hostname {hostname!r} is not of the form <name>-<ordinal> "
            "(a StatefulSet pod name such as shardset-2); pass --id instead"
        )
    return int(m.group("ordinal")) + 1


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise SystemExit(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise SystemExit(f"{name} must be a number of seconds in [0, 3600], got {raw!r}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shardset-node", description="Run one Shardset node.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--id", type=int, help="this node's id (positive)")
    who.add_argument(
        "--id-from-hostname",
        action="store_true",
        help="id = StatefulSet ordinal + 1, from $HOSTNAME (else the host name) <name>-<N>",
    )
    p.add_argument(
        "--consistency",
        choices=MODES,
        default=os.environ.get("SHARDSET_CONSISTENCY", "linearizable"),
        help="default read consistency (env SHARDSET_CONSISTENCY); changed live by "
        "POST /v1/admin/consistency",
    )
    p.add_argument(
        "--max-staleness-ms",
        type=int,
        default=_env_int("SHARDSET_MAX_STALENESS_MS"),
        help="default bound of bounded reads (env SHARDSET_MAX_STALENESS_MS); "
        "required with --consistency bounded",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=_env_seconds("SHARDSET_DRAIN_TIMEOUT_S", 10.0),
        help="on SIGTERM, wait at most this long for leadership transfers (default 10)",
    )
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--peer", type=_hostport, required=True, help="HOST:PORT for Raft traffic")
    p.add_argument("--api", type=_hostport, required=True, help="HOST:PORT for the client API")
    p.add_argument("--bootstrap", type=Path, required=True, help="the store's first shard map")
    p.add_argument(
        "--allow-join",
        action="store_true",
        help="a node whose id is not in the bootstrap map starts empty and waits to be "
        "added to the running store (POST /v1/admin/add-node); without it such an id is "
        "refused as a likely mistake",
    )
    p.add_argument(
        "--store-created-file",
        type=Path,
        help="if this file exists, the store was created before: on an empty data "
        "directory the node rejoins (waits to be re-added) instead of bootstrapping",
    )
    p.add_argument("--tick-ms", type=int, default=50)
    p.add_argument("--no-fsync", action="store_true", help="tests only: skip fdatasync")
    p.add_argument("--compact-every", type=int, default=10_000, help="entries between snapshots")
    p.add_argument(
        "--peer-override",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="tests only: reach peer ID through another address (a fault proxy)",
    )
    p.add_argument("--log-format", choices=("json", "console"), default="json")
    return p.parse_args(argv)


def _override(text: str) -> tuple[int, str]:
    node, _, addr = text.partition("=")
    if not node.isdigit() or not addr:
        raise SystemExit(f"--peer-override wants ID=HOST:PORT, got {text!r}")
    return int(node), addr


def node_id(ns: argparse.Namespace) -> int:
    if ns.id_from_hostname:
        return id_from_hostname(os.environ.get("HOSTNAME") or socket.gethostname())
    if ns.id <= 0:
        raise SystemExit(f"--id must be a positive integer, got {ns.id}")
    return int(ns.id)


def read_policy(ns: argparse.Namespace) -> ReadPolicy:
    try:
        return policy_from_body({"mode": ns.consistency, "maxStalenessMs": ns.max_staleness_ms})
    except ApiError as e:
        flag = "--max-staleness-ms" if e.extra.get("field") == "maxStalenessMs" else "--consistency"
        raise SystemExit(f"{flag}: {e}") from None


@dataclass(frozen=True)
class NodeProcess:
    """One node's parts, wired together."""

    node: Node
    peers: PeerClient
    reads: ReadPath
    kv: KvWrites
    admin: Admin
    wire: WireServer
    metrics: NodeMetrics

    async def start(self) -> None:
        await self.node.start(on_client=self.wire.serve)

    async def stop(self) -> None:
        await self.reads.close()
        await self.peers.close()
        await self.node.stop()

    def app(self) -> web.Application:
        return build_app(
            self.node,
            self.kv,
            self.reads,
            self.admin,
            self.metrics.registry,
            max_value_bytes=MAX_VALUE_BYTES,
            limits=self.node.cfg.http,
        )


def assemble(cfg: NodeConfig) -> NodeProcess:
    node = Node(cfg)
    peers = PeerClient(cfg.node_id, lambda: node.meta.map)
    reads = ReadPath(node, peers, cfg.read_policy)
    kv = KvWrites(node)
    admin = Admin(node, peers, reads)
    peers.serve_locally(admin.call)  # an orchestration's call to this node itself
    wire = WireServer(node.id, kv, reads, max_value_bytes=MAX_VALUE_BYTES, limits=cfg.wire)
    metrics = NodeMetrics(node, reads, wire)
    return NodeProcess(node, peers, reads, kv, admin, wire, metrics)


async def serve(ns: argparse.Namespace) -> None:
    me = node_id(ns)
    policy = read_policy(ns)
    bootstrap = ShardMap.decode(ns.bootstrap.read_bytes())
    if me not in bootstrap.nodes and not ns.allow_join:
        raise SystemExit(
            f"node {me} is not in the bootstrap map ({sorted(bootstrap.nodes)}); "
            "pass --allow-join to add it to the running store"
        )
    cfg = NodeConfig(
        node_id=me,
        data_dir=ns.data_dir,
        peer_host=ns.peer[0],
        peer_port=ns.peer[1],
        bootstrap=bootstrap,
        tick_interval=ns.tick_ms / 1000,
        fsync=not ns.no_fsync,
        compact_every=ns.compact_every,
        peer_overrides=tuple(_override(o) for o in ns.peer_override),
        read_policy=policy,
        store_created=ns.store_created_file is not None and ns.store_created_file.exists(),
    )
    process = assemble(cfg)
    await process.start()
    api = runner(process.app(), cfg.http)
    await api.setup()
    await web.TCPSite(api, ns.api[0], ns.api[1]).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger = structlog.get_logger()
    logger.info("serving", node=me, api=f"{ns.api[0]}:{ns.api[1]}", consistency=policy.view())
    await stop.wait()
    # Keep serving (redirects) while the leaderships move away, then stop.
    logger.info("stopping: draining leadership", node=me)
    drained = await drain_leadership(process.node, ns.drain_timeout_s)
    await api.cleanup()
    await process.stop()
    logger.info("stopped", node=me, drained=drained)


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run the node on uvloop where it is installed (a declared dependency; it cut the
    servers' CPU per write, see docs/performance.md), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    configure_logging(ns.log_format)
    run(serve(ns))
    return 0
