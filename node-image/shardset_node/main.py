"""Command line of the node process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import structlog
from aiohttp import web

from shardset_node.api import build_app
from shardset_node.kvengine import MAX_VALUE_BYTES
from shardset_node.node import Node, NodeConfig
from shardset_node.shardmap import ShardMap


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


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="shardset-node", description="Run one Shardset node.")
    p.add_argument("--id", type=int, required=True, help="this node's id (positive)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--peer", type=_hostport, required=True, help="HOST:PORT for Raft traffic")
    p.add_argument("--api", type=_hostport, required=True, help="HOST:PORT for the client API")
    p.add_argument("--bootstrap", type=Path, required=True, help="the store's first shard map")
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


async def serve(ns: argparse.Namespace) -> None:
    bootstrap = ShardMap.decode(ns.bootstrap.read_bytes())
    if ns.id not in bootstrap.nodes:
        raise SystemExit(f"node {ns.id} is not in the bootstrap map ({sorted(bootstrap.nodes)})")
    cfg = NodeConfig(
        node_id=ns.id,
        data_dir=ns.data_dir,
        peer_host=ns.peer[0],
        peer_port=ns.peer[1],
        bootstrap=bootstrap,
        tick_interval=ns.tick_ms / 1000,
        fsync=not ns.no_fsync,
        compact_every=ns.compact_every,
        peer_overrides=tuple(_override(o) for o in ns.peer_override),
    )
    node = Node(cfg)
    await node.start()
    runner = web.AppRunner(build_app(node, max_value_bytes=MAX_VALUE_BYTES), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ns.api[0], ns.api[1]).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    structlog.get_logger().info("serving", node=ns.id, api=f"{ns.api[0]}:{ns.api[1]}")
    await stop.wait()
    await runner.cleanup()
    await node.stop()


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    configure_logging(ns.log_format)
    asyncio.run(serve(ns))
    return 0
