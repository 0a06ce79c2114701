"""A real multi-process Shardset cluster on 127.0.0.1, for trying and testing.

`up` writes the bootstrap shard map (with the same placement code the operator
uses), starts one node process per node, and waits until every node reports
ready. The cluster's layout and process ids live in `<data-dir>/cluster.json`;
`~/.cache/shardset/last-local` remembers the last one started, so the CLI
finds it without `--endpoints`.

For tests, `up(..., fault_proxies=True)` puts a `FaultProxy` on every directed
link between nodes: node i reaches node j through the proxy for (i, j) (with
`--peer-override j=127.0.0.1:<proxy port>`), so `partition(side_a, side_b)` can
cut the cluster in two and `heal()` joins it again. The proxies run on an event
loop in a helper thread of the process that started the cluster and die with it,
so a proxied cluster is for tests, not for `shardset local up`. `node_args`
passes extra flags to every node (e.g. `--compact-every 50`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic
import yaml

from shardset.clienttls import ClientTls
from shardset.localpki import CLI_USER, LocalPki, store_key
from shardset_node.faults import BlockMode, FaultProxy
from shardset_proto import urls
from shardset_proto.admin import DeleteUser, PutUser, TransferLeader
from shardset_proto.identity import Role, token_digest
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.status import NodeStatus, ShardMapView
from shardset_proto.tlsfiles import client_context

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")
Link = tuple[int, int]  # (from node, to node): the proxy node `from` dials to reach `to`

STATE = "cluster.json"
CLI_CONFIG = "shardset.yaml"  # the CLI's config file of a TLS cluster
STORE_CREATED = "store-created"  # the marker the operator keeps in its ConfigMap
# The bounds of a ShardSet's spec (operator/shardset_operator/api/models.py).
MAX_NODES, MAX_SHARDS, MAX_REPLICATION = 100, 1024, 7
LAST = Path(os.environ.get("SHARDSET_CACHE", Path.home() / ".cache" / "shardset")) / "last-local"


class LocalClusterError(RuntimeError):
    pass


@dataclass
class LocalNode:
    id: int
    peer_port: int
    api_port: int
    pid: int = 0
    # Rebuilt on an empty data directory: starts with --store-created-file, so it
    # rejoins (hosting nothing until re-added) instead of bootstrapping.
    rejoin: bool = False
    # A TLS node's admin (HTTPS, client certificate required) and wire ports; 0: an
    # insecure node, which serves both on its API and peer ports.
    admin_port: int = 0
    wire_port: int = 0

    @property
    def tls(self) -> bool:
        return bool(self.admin_port)

    @property
    def api(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def admin(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}" if self.tls else self.api

    @property
    def address(self) -> NodeAddress:
        if not self.tls:
            return NodeAddress(f"127.0.0.1:{self.peer_port}", self.api)
        return NodeAddress(
            f"127.0.0.1:{self.peer_port}", self.api, self.admin, f"127.0.0.1:{self.wire_port}"
        )


class _NodeState(pydantic.BaseModel):
    id: int = pydantic.Field(ge=1)
    peer_port: int = pydantic.Field(ge=1, le=65535)
    api_port: int = pydantic.Field(ge=1, le=65535)
    pid: int = pydantic.Field(default=0, ge=0)
    rejoin: bool = False
    admin_port: int = pydantic.Field(default=0, ge=0, le=65535)
    wire_port: int = pydantic.Field(default=0, ge=0, le=65535)


class _State(pydantic.BaseModel):
    """`cluster.json`, checked when read: a damaged file is an error naming the field."""

    nodes: list[_NodeState] = pydantic.Field(min_length=1)
    no_fsync: bool
    node_args: list[str] = []
    proxy_ports: dict[str, int] = {}
    store: str = ""  # the store key of a TLS cluster ("": insecure)


class ProxyNet:
    """One FaultProxy per directed link, served by an event loop in a daemon thread.

    Thread-safe: every method hands its work to that loop and waits for it.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="shardset-fault-proxies", daemon=True
        )
        self._thread.start()
        self._proxies: dict[Link, FaultProxy] = {}
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if self._closed:
            coro.close()
            raise LocalClusterError("the fault proxies are stopped")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def add(self, link: Link, listen_port: int, target: tuple[str, int]) -> None:
        async def start() -> FaultProxy:
            proxy = FaultProxy(listen_port, target)
            await proxy.start()
            return proxy

        self._proxies[link] = self._run(start())

    @property
    def links(self) -> list[Link]:
        return sorted(self._proxies)

    def block(self, links: Iterable[Link], mode: BlockMode = "drop") -> None:
        chosen = [self._proxies[link] for link in links]

        async def block() -> None:
            for proxy in chosen:
                proxy.block(mode)

        self._run(block())

    def unblock(self, links: Iterable[Link] | None = None) -> None:
        chosen = list(self._proxies.values() if links is None else map(self._proxies.get, links))

        async def unblock() -> None:
            for proxy in chosen:
                if proxy is not None:
                    proxy.unblock()

        self._run(unblock())

    def blocked(self) -> dict[Link, BlockMode]:
        return {k: p.blocked for k, p in self._proxies.items() if p.blocked is not None}

    def connections(self) -> dict[Link, int]:
        """Connections each proxy accepted so far (a dial that went through it)."""
        return {k: p.connections for k, p in self._proxies.items()}

    def close(self) -> None:
        if self._closed:
            return
        proxies = list(self._proxies.values())

        async def stop_all() -> None:
            await asyncio.gather(*(p.stop() for p in proxies), return_exceptions=True)

        try:
            self._run(stop_all())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            if not self._thread.is_alive():
                self._loop.close()


@dataclass
class LocalCluster:
    data_dir: Path
    nodes: list[LocalNode]
    no_fsync: bool = False
    node_args: list[str] = field(default_factory=list)
    # "i>j" -> port of the proxy node i dials to reach node j; empty: no proxies.
    proxy_ports: dict[str, int] = field(default_factory=dict)
    net: ProxyNet | None = field(default=None, repr=False, compare=False)
    # Nodes `up` found without their Raft log in a store that had started (lost_its_log):
    # they run empty, voting in nothing, until `shardset local rebuild-node` runs.
    rejoining: list[int] = field(default_factory=list, repr=False, compare=False)
    # A TLS cluster's store key (`local.<name>`); "": an insecure cluster.
    store: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.store)

    @property
    def pki(self) -> LocalPki:
        return LocalPki(self.data_dir, self.store)

    @property
    def config_path(self) -> Path:
        """The CLI's config file for this cluster (written by `up` for a TLS one)."""
        return self.data_dir / CLI_CONFIG

    def client_tls(self) -> ClientTls | None:
        """The CLI user's credentials (the CA and user local-admin's token)."""
        if not self.tls:
            return None
        return ClientTls(cafile=self.pki.ca_file, token=self.pki.token())

    def operator_ssl(self) -> ssl.SSLContext | None:
        """The context of `shardset local`'s own calls: the operator identity, whose
        certificate the admin ports require."""
        if not self.tls:
            return None
        return client_context(self.pki.operator)

    @property
    def endpoints(self) -> list[str]:
        return [n.api for n in self.nodes]

    @property
    def node_ids(self) -> list[int]:
        return [n.id for n in self.nodes]

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def log_path(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}.log"

    def node(self, node_id: int) -> LocalNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise LocalClusterError(
            f"no node {node_id} in {self.data_dir} (nodes: {', '.join(map(str, self.node_ids))})"
        )

    def save(self) -> None:
        raw = {
            "nodes": [asdict(n) for n in self.nodes],
            "no_fsync": self.no_fsync,
            "node_args": self.node_args,
            "proxy_ports": self.proxy_ports,
            "store": self.store,
        }
        (self.data_dir / STATE).write_text(json.dumps(raw, indent=2))

    @staticmethod
    def load(data_dir: Path) -> LocalCluster:
        path = data_dir / STATE
        if not path.is_file():
            raise LocalClusterError(f"no local cluster in {data_dir} (missing {STATE})")
        try:
            raw = _State.model_validate_json(path.read_bytes())
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the file"
            raise LocalClusterError(
                f"{path} is corrupt ({where}: {first['msg']}); "
                f"remove {data_dir} to start a new cluster there"
            ) from None
        return LocalCluster(
            data_dir,
            [LocalNode(**n.model_dump()) for n in raw.nodes],
            raw.no_fsync,
            raw.node_args,
            raw.proxy_ports,
            store=raw.store,
        )

    # --- fault proxies ------------------------------------------------------------
    def start_proxies(self) -> ProxyNet:
        """Start the proxies of every directed link (once; idempotent)."""
        if self.net is not None:
            return self.net
        if not self.proxy_ports:
            raise LocalClusterError("this cluster was started without fault proxies")
        net = ProxyNet()
        try:
            for name, port in sorted(self.proxy_ports.items()):
                src, dst = _link(name)
                net.add((src, dst), port, ("127.0.0.1", self.node(dst).peer_port))
        except BaseException:
            net.close()
            raise
        self.net = net
        return net

    def _proxies(self) -> ProxyNet:
        if self.net is None:
            raise LocalClusterError("no fault proxies: start the cluster with fault_proxies=True")
        return self.net

    def partition(
        self, side_a: Iterable[int], side_b: Iterable[int], mode: BlockMode = "drop"
    ) -> None:
        """Cut every link between the two sides, both ways (adds to any cut in force)."""
        a, b = list(side_a), list(side_b)
        if set(a) & set(b):
            raise ValueError(f"the sides overlap: {sorted(set(a) & set(b))}")
        links = [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
        self._proxies().block(links, mode)

    def isolate(self, node_id: int, mode: BlockMode = "drop") -> None:
        """Cut one node off from all the others."""
        self.partition([node_id], [n for n in self.node_ids if n != node_id], mode)

    def heal(self) -> None:
        """Let traffic flow on every link again."""
        self._proxies().unblock()

    def add_node(self) -> LocalNode:
        """Start a new node, not in the bootstrap map: it begins empty and hosts nothing
        until it is added to the store (POST /v1/admin/add-node) and given replicas."""
        if self.proxy_ports:
            raise LocalClusterError("nodes cannot be added to a cluster with fault proxies")
        if self.tls:
            peer, api, admin, wire = free_ports(4)
            node = LocalNode(max(self.node_ids) + 1, peer, api, admin_port=admin, wire_port=wire)
            self.pki.ensure_node(node.id)
        else:
            peer, api = free_ports(2)
            node = LocalNode(max(self.node_ids) + 1, peer, api)
        self.nodes.append(node)
        self.save()
        self.start_node(node.id)
        return node

    def forget_node(self, node_id: int) -> None:
        """Stop a node that left the store and drop it from this cluster's list."""
        self.stop_node(node_id)
        self.nodes = [n for n in self.nodes if n.id != node_id]
        self.save()

    # --- processes --------------------------------------------------------------
    def start_node(self, node_id: int) -> None:
        n = self.node(node_id)
        if n.pid and _alive(n.pid):
            return
        cmd = [
            sys.executable,
            "-m",
            "shardset_node",
            "--id",
            str(n.id),
            "--data-dir",
            str(self.data_dir / f"node-{n.id}"),
            "--peer",
            f"127.0.0.1:{n.peer_port}",
            "--api",
            f"127.0.0.1:{n.api_port}",
            "--bootstrap",
            str(self.data_dir / "bootstrap.json"),
            "--allow-join",  # nodes added after the bootstrap map was written
        ]
        if n.rejoin or self.lost_its_log(n.id):  # see lost_its_log
            cmd += ["--store-created-file", str(self.data_dir / STORE_CREATED)]
        if self.no_fsync:
            cmd.append("--no-fsync")
        cmd += self._tls_args(n)
        cmd.extend(self.node_args)
        if self.proxy_ports:
            self.start_proxies()
            for name, port in sorted(self.proxy_ports.items()):
                src, dst = _link(name)
                if src == n.id:
                    cmd += ["--peer-override", f"{dst}=127.0.0.1:{port}"]
        logf = open(self.data_dir / f"node-{n.id}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True
        )
        logf.close()
        n.pid = proc.pid
        self.save()

    def _tls_args(self, n: LocalNode) -> list[str]:
        if not self.tls:
            return []
        return [
            "--tls-dir",
            str(self.pki.nodes_dir),
            "--store",
            self.store,
            "--admin",
            f"127.0.0.1:{n.admin_port}",
            "--wire",
            f"127.0.0.1:{n.wire_port}",
        ]

    # --- the store-created marker ----------------------------------------------------
    @property
    def store_created(self) -> bool:
        """Whether the store has started once (`up` wrote the marker then)."""
        return (self.data_dir / STORE_CREATED).exists()

    def mark_created(self) -> None:
        """The store started once: from now on a node of the bootstrap map found without
        its Raft log lost it, and must rejoin rather than bootstrap (lost_its_log)."""
        if not self.store_created:
            (self.data_dir / STORE_CREATED).write_text("true")

    def lost_its_log(self, node_id: int) -> bool:
        """A node of the bootstrap map whose Raft log is gone (its directory deleted by
        hand, say) in a store that has started: were it to bootstrap, its empty log
        would count as a voter's, and with one stale replica it could elect a leader
        missing acknowledged writes. It starts with the store-created marker instead
        (origin "rejoin", hosting and voting in nothing) until `shardset local
        rebuild-node` gives its replicas back, as the operator does with a pod back on
        an empty volume. Only then, and not for every start as the operator does: a
        node whose log is corrupt mid-way then stops (exit 3) rather than moving its
        data aside by itself, and `local up` names the rebuild (stopped_because). Nodes
        added later (add_node) are not in the bootstrap map: they start empty anyway."""
        if not self.store_created or not self._in_bootstrap_map(node_id):
            return False
        raft = self.node_dir(node_id) / "raft"
        return not raft.is_dir() or not any(raft.rglob("*.log"))

    def _in_bootstrap_map(self, node_id: int) -> bool:
        try:
            boot = ShardMap.decode((self.data_dir / "bootstrap.json").read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return True  # unknown: the safe side is never to bootstrap an empty log
        return node_id in boot.nodes

    def mark_rejoin(self, node_id: int) -> None:
        """From now on `node_id` starts with the store-created marker: on an empty data
        directory it rejoins (hosting nothing until re-added) instead of bootstrapping."""
        (self.data_dir / STORE_CREATED).write_text("true")
        self.node(node_id).rejoin = True
        self.save()

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 10.0) -> None:
        n = self.node(node_id)
        if n.pid and _alive(n.pid):
            os.kill(n.pid, signal.SIGKILL if kill else signal.SIGTERM)
            _wait_gone(n.pid, timeout)
        n.pid = 0
        self.save()

    def running(self, node_id: int) -> bool:
        n = self.node(node_id)
        return bool(n.pid) and _alive(n.pid)

    def shutdown(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop every node, then the fault proxies, if any (for tests' teardown)."""
        try:
            for n in self.nodes:
                self.stop_node(n.id, kill=kill, timeout=timeout)
        finally:
            if self.net is not None:
                self.net.close()
                self.net = None

    def balance_leaders(self, timeout: float = 30.0) -> dict[int, int]:
        """Move each shard's leadership to its preferred leader, the first replica in the
        shard map, which the placement rotates over the nodes (what the operator's leader
        balancing does in Kubernetes). Elections alone often leave one node leading most
        shards, and then that node does most of the work. Returns shard -> leader."""
        try:
            return asyncio.run(asyncio.wait_for(_balance(self), timeout))
        except TimeoutError:
            raise LocalClusterError(
                f"leaderships not on their preferred replicas after {timeout}s"
            ) from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = {n.id for n in self.nodes if n.pid}
        exited: list[int] = []
        while pending and not exited and time.monotonic() < deadline:
            for nid in sorted(pending):
                # A node rejoining empty is not ready until rebuild-node re-adds it
                # (its /readyz says so): that it runs and answers is all `up` can wait for.
                api, ctx = self.node(nid).api, self.operator_ssl()
                if _ready(api, ctx=ctx) or (
                    nid in self.rejoining and _ready(api, urls.HEALTHZ, ctx=ctx)
                ):
                    pending.discard(nid)
                elif not self.running(nid):
                    exited.append(nid)  # it will not get ready: say so now
            time.sleep(0.1)
        if pending:
            logs = ", ".join(str(self.data_dir / f"node-{i}.log") for i in sorted(pending))
            hints = "".join(self.stopped_because(i) for i in exited)
            why = f"nodes {exited} exited" if exited else f"not ready after {timeout}s"
            raise LocalClusterError(f"nodes {sorted(pending)}: {why}; see {logs}{hints}")

    def put_cli_user(self, timeout: float = 30.0) -> None:
        """User `local-admin` (role admin) with the token in tls/cli/token, put on the
        metadata leader over the admin port with the operator certificate (again at
        every `up`: the same digest, so nothing changes), and the CLI's config file."""
        body = PutUser(name=CLI_USER, role=Role.ADMIN, token_sha256=token_digest(self.pki.token()))
        self.on_meta_leader(body, timeout)
        self.write_cli_config()

    def on_meta_leader(self, body: PutUser | DeleteUser, timeout: float = 30.0) -> None:
        """A user change on the metadata leader, as the operator (`shardset local`'s
        user creation, tests, the benchmark's user)."""
        try:
            asyncio.run(asyncio.wait_for(_on_meta_leader(self, body), timeout))
        except TimeoutError:
            raise LocalClusterError(
                f"{body.action} {body.name} not done after {timeout}s: no metadata leader "
                f"took it; see {self.data_dir}/node-*.log"
            ) from None

    def write_cli_config(self) -> None:
        config = {
            "endpoints": self.endpoints,
            "cacert": str(self.pki.ca_file),
            "token-file": str(self.pki.token_file),
        }
        self.config_path.write_text(
            "# shardset CLI settings for this local cluster: export SHARDSET_CONFIG="
            f"{self.config_path}\n" + yaml.safe_dump(config, sort_keys=False)
        )

    def stopped_because(self, node_id: int) -> str:
        """Why a node is not running, from the last `storage_corrupt` event in its log."""
        if self.running(node_id):
            return ""
        try:
            lines = self.log_path(node_id).read_bytes().splitlines()[-200:]
        except OSError:
            return ""
        for line in reversed(lines):
            if b"storage_corrupt" in line:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                where = f" ({event.get('file')}, offset {event.get('offset')})"
                return (
                    f"; node {node_id} stopped: its Raft log is corrupt{where}; "
                    f"`shardset local rebuild-node {node_id}` rebuilds it empty from its peers"
                )
        return ""


def up(
    data_dir: Path,
    nodes: int,
    shards: int,
    replication: int,
    *,
    no_fsync: bool = False,
    node_args: Sequence[str] = (),
    fault_proxies: bool = False,
    remember: bool = True,
    ready_timeout: float = 30.0,
    stop_on_failure: bool = False,
    tls: bool = False,
) -> LocalCluster:
    """Start a new cluster in `data_dir`, or restart the one there (its settings win).

    `tls=True` (what `shardset local up` does unless --insecure): a CA, node and
    operator certificates (shardset.localpki), the nodes' TLS, admin and wire ports,
    user `local-admin` with a token, and the CLI's config file (`config_path`).
    `remember=False` leaves the CLI's "last local cluster" alone (tests);
    `stop_on_failure=True` stops the nodes again if they do not get ready.
    """
    data_dir = data_dir.resolve()
    if (data_dir / STATE).exists():
        cluster = LocalCluster.load(data_dir)  # restart an existing cluster with its data
    else:
        shape = (nodes, shards, replication)
        cluster = _create(data_dir, shape, no_fsync, node_args, fault_proxies, tls)
    cluster.rejoining = [n.id for n in cluster.nodes if cluster.lost_its_log(n.id)]
    try:
        if cluster.tls:
            cluster.pki.ensure(cluster.node_ids)  # new leaves for any due for renewal
        for n in cluster.nodes:
            cluster.start_node(n.id)
        if remember:
            LAST.parent.mkdir(parents=True, exist_ok=True)
            LAST.write_text(str(data_dir))
        cluster.wait_ready(ready_timeout)
        cluster.mark_created()  # every node has started: the store exists
        if cluster.tls:
            cluster.put_cli_user(ready_timeout)
    except BaseException:
        if stop_on_failure:
            cluster.shutdown(kill=True)
        raise
    return cluster


def _create(
    data_dir: Path,
    shape: tuple[int, int, int],
    no_fsync: bool,
    node_args: Sequence[str],
    fault_proxies: bool,
    tls: bool,
) -> LocalCluster:
    """A new cluster's layout, bootstrap map and certificates, saved (not started)."""
    nodes, shards, replication = shape
    check_shape(nodes, shards, replication)
    _writable_dir(data_dir)
    links = [(i, j) for i in range(1, nodes + 1) for j in range(1, nodes + 1) if i != j]
    per = 4 if tls else 2  # peer, api (and admin, wire)
    ports = free_ports(per * nodes + (len(links) if fault_proxies else 0))
    made = [
        LocalNode(
            i,
            ports[per * (i - 1)],
            ports[per * (i - 1) + 1],
            admin_port=ports[per * (i - 1) + 2] if tls else 0,
            wire_port=ports[per * (i - 1) + 3] if tls else 0,
        )
        for i in range(1, nodes + 1)
    ]
    proxies = zip(links, ports[per * nodes :], strict=False)
    cluster = LocalCluster(
        data_dir,
        made,
        no_fsync,
        list(node_args),
        {f"{i}>{j}": p for (i, j), p in proxies} if fault_proxies else {},
        store=store_key(data_dir) if tls else "",
    )
    boot = bootstrap_map(
        {n.id: n.address for n in cluster.nodes}, shards=shards, replication=replication
    )
    (data_dir / "bootstrap.json").write_bytes(boot.encode())
    if tls:
        cluster.pki.ensure(cluster.node_ids)
    cluster.save()
    return cluster


def check_shape(nodes: int, shards: int, replication: int) -> None:
    """The limits a ShardSet's spec has (operator/shardset_operator/api/models.py)."""
    for what, value, top in (
        ("nodes", nodes, MAX_NODES),
        ("shards", shards, MAX_SHARDS),
        ("replication", replication, MAX_REPLICATION),
    ):
        if not 1 <= value <= top:
            raise LocalClusterError(f"{what} must be 1 to {top}, got {value}")
    if replication > nodes:
        raise LocalClusterError(
            f"replication {replication} needs at least as many nodes, got {nodes}"
        )


def _writable_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise LocalClusterError(f"data dir {path} is not a directory")
    probe = path / ".write-probe"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LocalClusterError(f"cannot write to data dir {path}: {e.strerror or e}") from None


def down(data_dir: Path) -> LocalCluster:
    cluster = LocalCluster.load(data_dir.resolve())
    for n in cluster.nodes:
        cluster.stop_node(n.id)
    return cluster


def last_cluster() -> LocalCluster | None:
    """The local cluster `shardset local up` started last, if it is still there."""
    try:
        return LocalCluster.load(Path(LAST.read_text().strip()))
    except (LocalClusterError, OSError):
        return None


def last_endpoints() -> list[str]:
    last = last_cluster()
    return last.endpoints if last is not None else []


def _link(name: str) -> Link:
    src, _, dst = name.partition(">")
    return int(src), int(dst)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap it if it is our child and already exited
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


async def _balance(cluster: LocalCluster) -> dict[int, int]:
    endpoints = cluster.endpoints
    async with operator_session(cluster) as http:

        async def get(url: str) -> Any:
            async with http.get(url) as resp:
                return await resp.json() if resp.status == 200 else None

        while True:
            views = await asyncio.gather(
                *(get(url + urls.STATUS) for url in endpoints), return_exceptions=True
            )
            shardmap = ShardMapView.model_validate(await get(endpoints[0] + urls.SHARDMAP))
            admin = {n: a.admin or a.api for n, a in shardmap.nodes.items()}
            preferred = {s: h[0] for s, h in shardmap.replicas.items() if h}
            leaders = _leaders(views)
            wrong = {s: p for s, p in preferred.items() if leaders.get(s) != p}
            if not wrong:
                return leaders
            for shard, target in sorted(wrong.items()):
                if shard in leaders:  # else no leader yet: look again next time
                    body = TransferLeader(shard=shard, to=target)
                    url = admin[leaders[shard]] + body.path()
                    async with http.post(url, json=body.to_json()):
                        pass  # a refusal (a transfer under way) is asked again next pass
            await asyncio.sleep(0.3)


@asynccontextmanager
async def operator_session(cluster: LocalCluster) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for `shardset local`'s own calls: as the operator on a TLS
    cluster (its certificate opens the admin ports), plain otherwise."""
    import aiohttp  # the CLI's other local commands don't need it

    ctx = cluster.operator_ssl()
    connector = aiohttp.TCPConnector(ssl=ctx) if ctx is not None else None
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        yield http


async def _on_meta_leader(cluster: LocalCluster, body: PutUser | DeleteUser) -> None:
    """POST `body` to the metadata leader: each node in turn (a redirect names the
    leader) until one takes it; retried while there is none (an election)."""
    import aiohttp

    admin = {n.id: n.admin for n in cluster.nodes}
    async with operator_session(cluster) as http:
        target = cluster.node_ids[0]
        while True:
            try:
                async with http.post(
                    admin[target] + body.path(), json=body.to_json(), allow_redirects=False
                ) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status == 200:
                        return
                    leader = answer.get("leader") if isinstance(answer, dict) else None
                    if resp.status == 307 and leader in admin:
                        target = int(leader)
                        continue
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            ids = cluster.node_ids
            target = ids[(ids.index(target) + 1) % len(ids)]
            await asyncio.sleep(0.2)


def _leaders(views: Iterable[Any]) -> dict[int, int]:
    """shard -> node, from the nodes' /v1/status answers (each reports the groups it
    leads; the metadata group, "meta", is left out)."""
    found: dict[int, int] = {}
    for view in views:
        if not isinstance(view, dict):
            continue
        report = NodeStatus.model_validate(view)
        for shard, g in report.shards.items():
            if g.is_leader and shard != 0:
                found[shard] = report.node
    return found


def _ready(api: str, probe: str = urls.READYZ, *, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(api + probe, timeout=1, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, TimeoutError):
        return False
