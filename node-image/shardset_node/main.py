"""The node process: its command line, and the composition root that builds a node
from its parts (core, peer client, reads, writes, admin actions, front ends, metrics).

With `--tls-dir` (issue 16) the node serves TLS on every port it opens: the peer port
(mutual TLS, the store's nodes only), the client API (HTTPS, a client certificate or a
bearer token), the admin API (`--admin`: HTTPS, client certificates required) and the
wire protocol (`--wire`: TLS, a client certificate or a token). Without it the node runs
insecure as before, and says so once (`insecure_mode`)."""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from shardset_node.admin.dispatch import Admin
from shardset_node.auth import Authenticator
from shardset_node.checker import ConsistencyChecker
from shardset_node.config import NodeConfig
from shardset_node.consistency import ReadPolicy, policy_from_body
from shardset_node.core import Node
from shardset_node.drain import drain_leadership
from shardset_node.frontends.http import make_admin_app, make_app, runner
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
from shardset_node.tls import DEFAULT_RELOAD_INTERVAL, NodeTls, TlsConfigError
from shardset_proto.commands import MAX_VALUE_BYTES
from shardset_proto.consistency import MODES
from shardset_proto.errors import ApiError
from shardset_proto.shardmap import NodeAddress, ShardMap

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


def _tuning_args(p: argparse.ArgumentParser) -> None:
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


def _tls_args(p: argparse.ArgumentParser) -> None:
    tls_dir = os.environ.get("SHARDSET_TLS_DIR")
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=Path(tls_dir) if tls_dir else None,
        help="serve TLS on every port, from this directory: ca.crt, and node-<id>.crt/.key "
        "(else tls.crt/.key) naming shardset://<store>/node/<id> (env SHARDSET_TLS_DIR; "
        "without it the node runs insecure)",
    )
    p.add_argument(
        "--store",
        default=os.environ.get("SHARDSET_STORE") or None,
        help="the store key the certificates name (<namespace>.<name>; local.<name> for "
        "shardset local); required with --tls-dir (env SHARDSET_STORE)",
    )
    p.add_argument(
        "--tls-reload-s",
        type=float,
        default=_env_seconds("SHARDSET_TLS_RELOAD_S", DEFAULT_RELOAD_INTERVAL),
        help="seconds between re-reads of --tls-dir: new certificates are used for every "
        "new connection (env SHARDSET_TLS_RELOAD_S, default 5)",
    )
    p.add_argument(
        "--admin",
        type=_hostport,
        help="HOST:PORT of the admin API (HTTPS, client certificates required; needs "
        "--tls-dir); without it admin actions are served on the API port",
    )
    p.add_argument(
        "--wire",
        type=_hostport,
        help="HOST:PORT of the binary client protocol (TLS with --tls-dir); an insecure "
        "node also serves it on the peer port",
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
    _tuning_args(p)
    _integrity_args(p)
    _tls_args(p)
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


def load_tls(ns: argparse.Namespace, me: int) -> NodeTls | None:
    """The node's TLS material (None: insecure); exits naming what is wrong with it."""
    if ns.tls_dir is None:
        if ns.admin is not None:
            raise SystemExit(
                "--admin needs --tls-dir: the admin port serves only callers with a client "
                "certificate (without TLS, admin actions stay on the API port)"
            )
        return None
    if not ns.store:
        raise SystemExit(
            "--store KEY is required with --tls-dir: the store key the certificates name "
            "(shardset://<store>/node/<id>; <namespace>.<name> in Kubernetes)"
        )
    if ns.tls_reload_s <= 0:
        raise SystemExit(f"--tls-reload-s must be positive, got {ns.tls_reload_s}")
    try:
        return NodeTls(ns.tls_dir, ns.store, me, reload_interval=ns.tls_reload_s)
    except TlsConfigError as exc:
        raise SystemExit(f"--tls-dir {ns.tls_dir}: {exc}") from None


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
    tls: NodeTls | None = None
    auth: Authenticator | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        # With TLS the wire protocol has its own listener (serve()), not the peer port.
        on_client = self.wire.serve if self.tls is None else None
        await self.node.start(on_client=on_client, tls=self.tls)
        if self.tls is not None:
            self._tasks.append(asyncio.create_task(self.tls.run(), name="tls-reload"))
        await self.checker.start()
        await self.rebuilder.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.checker.stop()
        await self.rebuilder.stop()
        await self.reads.close()
        await self.peers.close()
        await self.node.stop()

    def app(self, *, admin_routes: bool = True) -> web.Application:
        """The client API (with the admin actions unless the admin port serves them)."""
        return make_app(
            self.node,
            self.kv,
            self.reads,
            self.admin,
            self.metrics.registry,
            max_value_bytes=MAX_VALUE_BYTES,
            limits=self.node.cfg.http,
            auth=self.auth,
            admin_routes=admin_routes,
        )

    def admin_app(self) -> web.Application:
        """The admin port's API (TLS only: it authenticates by client certificate)."""
        assert self.auth is not None, "the admin port needs TLS"
        return make_admin_app(
            self.node,
            self.admin,
            auth=self.auth,
            max_value_bytes=MAX_VALUE_BYTES,
            limits=self.node.cfg.http,
        )


def assemble(cfg: NodeConfig, tls: NodeTls | None = None) -> NodeProcess:
    node = Node(cfg)
    peers = PeerClient(cfg.node_id, lambda: node.meta.map, tls=tls)
    reads = ReadPath(node, peers, cfg.read_policy)
    kv = KvWrites(node)
    checker = ConsistencyChecker(node, peers, cfg.check_interval)
    admin = Admin(node, peers, reads, checker)
    peers.serve_locally(admin.call)  # an orchestration's call to this node itself
    # With TLS every client is authenticated (certificate or token) and authorized
    # against the store's users; the node's own verify checks the current CA bundle.
    auth = None if tls is None else Authenticator(tls.store, lambda: node.users, tls.verify)
    wire = WireServer(
        node.id, kv, reads, max_value_bytes=MAX_VALUE_BYTES, limits=cfg.wire, auth=auth
    )
    metrics = NodeMetrics(node, reads, wire)
    return NodeProcess(
        node, peers, reads, kv, admin, wire, metrics, checker, Rebuilder(node, peers), tls, auth
    )


@dataclass
class Listeners:
    """The client-facing listeners: the API, and the admin API and the wire protocol
    when they have ports of their own."""

    api: web.AppRunner
    admin: web.AppRunner | None = None
    wire: asyncio.Server | None = None

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        if self.admin is not None:
            await self.admin.cleanup()
        await self.api.cleanup()


async def open_listeners(process: NodeProcess, ns: argparse.Namespace) -> Listeners:
    tls, limits = process.tls, process.node.cfg.http
    # Client certificates optional where a bearer token may stand in for one.
    client_ctx = None if tls is None else tls.server_context(require_client_cert=False)
    api = runner(process.app(admin_routes=ns.admin is None), limits)
    await api.setup()
    listeners = Listeners(api)
    await web.TCPSite(api, ns.api[0], ns.api[1], ssl_context=client_ctx).start()
    if ns.admin is not None and tls is not None:
        listeners.admin = runner(process.admin_app(), limits)
        await listeners.admin.setup()
        admin_ctx = tls.server_context(require_client_cert=True)
        await web.TCPSite(listeners.admin, *ns.admin, ssl_context=admin_ctx).start()
    if ns.wire is not None:
        # A TLS handshake is bounded like a half-sent frame (asyncio's default is 60 s).
        handshake = process.wire.limits.frame_timeout if client_ctx is not None else None
        listeners.wire = await asyncio.start_server(
            process.wire.accept, ns.wire[0], ns.wire[1], ssl=client_ctx,
            ssl_handshake_timeout=handshake,
        )  # fmt: skip
    return listeners


def address_warnings(ns: argparse.Namespace, tls: bool, entry: NodeAddress | None) -> list[str]:
    """How this node's entry in the shard map (what other nodes, the operator and
    clients use to reach it) disagrees with the ports it serves."""
    if entry is None:
        return []
    out = []
    if tls and not entry.api.startswith("https://"):
        out.append(f"api {entry.api!r} is not https:// but the API serves TLS")
    for flag, value, port in (("admin", entry.admin, ns.admin), ("wire", entry.wire, ns.wire)):
        if port is not None and not value.rstrip("/").endswith(f":{port[1]}"):
            out.append(f"{flag} {value!r} does not name port {port[1]} (--{flag})")
    return out


def _log_mode(ns: argparse.Namespace, process: NodeProcess) -> None:
    logger = structlog.get_logger()
    if process.tls is None:
        logger.warning(
            "insecure_mode",
            node=process.node.id,
            off="TLS on every port; peer authentication (whoever reaches the peer port "
            "can send Raft messages as any node); client authentication and authorization "
            "(whoever reaches the API, wire or peer port can read, write and run admin "
            "actions)",
            enable="--tls-dir DIR --store KEY",
        )
        return
    entry = process.node.meta.map.nodes.get(process.node.id)
    for problem in address_warnings(ns, True, entry):
        logger.warning("advertised_address_mismatch", node=process.node.id, problem=problem)


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
    tls = load_tls(ns, me)
    fatal = asyncio.Event()
    process = await _start(cfg, fatal, tls)
    if process is None:
        return FATAL_EXIT
    _log_mode(ns, process)
    api = await open_listeners(process, ns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logger = structlog.get_logger()
    logger.info(
        "serving",
        node=me,
        api=f"{ns.api[0]}:{ns.api[1]}",
        admin=None if ns.admin is None else f"{ns.admin[0]}:{ns.admin[1]}",
        wire=None if ns.wire is None else f"{ns.wire[0]}:{ns.wire[1]}",
        tls=None if tls is None else tls.report().cert_serial,
        consistency=policy.view(),
    )
    await _first(stop.wait(), fatal.wait())
    if fatal.is_set():
        return await _die(process, api, ns.fatal_grace_s)
    # Keep serving (redirects) while the leaderships move away, then stop. A node whose
    # disk is full cannot hand anything over (its cores are stalled): no drain.
    logger.info("stopping: draining leadership", node=me)
    drained = False
    if process.node.host.refusal() is None:
        drained = await drain_leadership(process.node, ns.drain_timeout_s)
    await api.close()
    await process.stop()
    logger.info("stopped", node=me, drained=drained)
    return 0


async def _start(
    cfg: NodeConfig, fatal: asyncio.Event, tls: NodeTls | None = None
) -> NodeProcess | None:
    """The node, started, its Raft loop's death setting `fatal`; None (logged as one
    `node_fatal` line) when a full disk does not even let it open its storage."""
    try:
        process = assemble(cfg, tls)
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


async def _die(process: NodeProcess, api: Listeners, grace: float) -> int:
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
    await api.close()
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
