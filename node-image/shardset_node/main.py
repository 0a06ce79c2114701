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
from shardset_node.checker import ConsistencyChecker
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
from shardset_node.rebuild import Rebuilder
from shardset_node.storage.diskspace import is_disk_full
from shardset_node.storage.quarantine import EXIT_STORAGE_CORRUPT, quarantine_data_dir
from shardset_node.storage.raftstore import StorageCorruption
from shardset_node.storage.wal import WalCorruption, WalError
from shardset_proto.commands import MAX_VALUE_BYTES
from shardset_proto.consistency import MODES
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import ShardMap

# The exit code of a node whose Raft loop died (EX_SOFTWARE): crash-only, the kubelet (or
# `shardset local`) restarts it; the log's one `node_fatal` event names the cause.
FATAL_EXIT = 70


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


def _integrity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check-interval-s",
        type=float,
        default=_env_seconds("SHARDSET_CHECK_INTERVAL_S", 600.0),
        help="seconds between consistency checks of each shard this node leads "
        "(env SHARDSET_CHECK_INTERVAL_S; default 600, 0 turns periodic checks off)",
    )


def _default_min_free_mb() -> int:
    value = _env_int("SHARDSET_MIN_FREE_MB")
    return 64 if value is None else value


def _failure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fatal-grace-s",
        type=float,
        default=_env_seconds("SHARDSET_FATAL_GRACE_S", 1.0),
        help="once the Raft loop has died, answer 503 (health, requests) this long before "
        "exiting with code 70 (env SHARDSET_FATAL_GRACE_S, default 1)",
    )
    p.add_argument(
        "--min-free-mb",
        type=int,
        default=_default_min_free_mb(),
        help="below this many MiB free on the data file system, refuse writes (507) and "
        "hand leaderships off (env SHARDSET_MIN_FREE_MB, default 64)",
    )


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
    _failure_args(p)
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
    _integrity_args(p)
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
    checker: ConsistencyChecker
    rebuilder: Rebuilder

    async def start(self) -> None:
        await self.node.start(on_client=self.wire.serve)
        await self.checker.start()
        await self.rebuilder.start()

    async def stop(self) -> None:
        await self.checker.stop()
        await self.rebuilder.stop()
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
    checker = ConsistencyChecker(node, peers, cfg.check_interval)
    admin = Admin(node, peers, reads, checker)
    peers.serve_locally(admin.call)  # an orchestration's call to this node itself
    wire = WireServer(node.id, kv, reads, max_value_bytes=MAX_VALUE_BYTES, limits=cfg.wire)
    metrics = NodeMetrics(node, reads, wire)
    return NodeProcess(
        node, peers, reads, kv, admin, wire, metrics, checker, Rebuilder(node, peers)
    )


async def serve(ns: argparse.Namespace) -> int:
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
        check_interval=ns.check_interval_s,
        min_free_bytes=ns.min_free_mb << 20,
    )
    fatal = asyncio.Event()
    process = await _start(cfg, fatal)
    if process is None:
        return FATAL_EXIT
    api = runner(process.app(), cfg.http)
    await api.setup()
    await web.TCPSite(api, ns.api[0], ns.api[1]).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger = structlog.get_logger()
    logger.info("serving", node=me, api=f"{ns.api[0]}:{ns.api[1]}", consistency=policy.view())
    await _first(stop.wait(), fatal.wait())
    if fatal.is_set():
        return await _die(process, api, ns.fatal_grace_s)
    # Keep serving (redirects) while the leaderships move away, then stop. A node whose
    # disk is full cannot hand anything over (its cores are stalled): no drain.
    logger.info("stopping: draining leadership", node=me)
    drained = False
    if process.node.host.refusal() is None:
        drained = await drain_leadership(process.node, ns.drain_timeout_s)
    await api.cleanup()
    await process.stop()
    logger.info("stopped", node=me, drained=drained)
    return 0


async def _start(cfg: NodeConfig, fatal: asyncio.Event) -> NodeProcess | None:
    """The node, started, its Raft loop's death setting `fatal`; None (logged as one
    `node_fatal` line) when a full disk does not even let it open its storage."""
    try:
        process = assemble(cfg)
        process.node.host.on_fatal = lambda _: fatal.set()
        # A damaged engine file (storage/enginecheck.py): exit too, the restart
        # quarantines it and replays the log into a fresh one.
        process.node.engine.on_malformed = lambda _: fatal.set()
        await process.start()
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        structlog.get_logger().critical(
            "node_fatal", node=cfg.node_id, error=f"cannot start: {exc}", exit_code=FATAL_EXIT
        )
        return None
    return process


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()


async def _die(process: NodeProcess, api: web.AppRunner, grace: float) -> int:
    """Crash-only: the Raft loop died. Health and every request answer 503 for `grace`
    seconds (probes and clients learn why), then the process exits with FATAL_EXIT."""
    node = process.node
    cause = node.host.failure
    if cause is None and node.engine.malformed is not None:
        cause = RuntimeError(f"engine file malformed: {node.engine.malformed}")
    structlog.get_logger().critical(
        "node_fatal",
        node=node.id,
        error=str(cause) or type(cause).__name__,
        exit_code=FATAL_EXIT,
        exit_in_s=grace,
    )
    await asyncio.sleep(grace)
    await api.cleanup()
    try:
        await process.stop()
    except Exception as exc:  # the storage may be what failed: exit all the same
        structlog.get_logger().warning("stop_after_fatal_failed", error=repr(exc))
    return FATAL_EXIT


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run the node on uvloop where it is installed (a declared dependency; it cut the
    servers' CPU per write, see docs/performance.md), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    configure_logging(ns.log_format)
    try:
        return run(serve(ns))
    except (WalCorruption, StorageCorruption) as exc:
        if not _set_aside_corrupt_log(ns, exc):
            return EXIT_STORAGE_CORRUPT
    return run(serve(ns))  # empty now: it rejoins the way a node that lost its volume does


def _set_aside_corrupt_log(ns: argparse.Namespace, exc: WalError) -> bool:
    """One structured event for a log corrupt mid-way; True if the data directory was
    quarantined so the node can start empty (storage/quarantine.py says when)."""
    where = {"file": str(exc.path), "offset": exc.offset} if isinstance(exc, WalCorruption) else {}
    logger = structlog.get_logger()
    created = ns.store_created_file is not None and ns.store_created_file.exists()
    if not created:
        logger.error(
            "storage_corrupt",
            error=str(exc),
            **where,
            exit_code=EXIT_STORAGE_CORRUPT,
            action="move the data directory aside and start the node empty to rebuild it",
        )
        return False
    moved = quarantine_data_dir(ns.data_dir)
    logger.error(
        "storage_corrupt_quarantined",
        error=str(exc),
        **where,
        quarantine=str(moved),
        action="starting empty: the operator re-adds this node's replicas",
    )
    return True
