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
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from shardset_node.faults import BlockMode, FaultProxy
from shardset_proto import urls
from shardset_proto.admin import TransferLeader
from shardset_proto.shardmap import NodeAddress, ShardMap, bootstrap_map
from shardset_proto.status import NodeStatus, ShardMapView

T = TypeVar("T")
Link = tuple[int, int]  # (from node, to node): the proxy node `from` dials to reach `to`

STATE = "cluster.json"
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

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


class _NodeState(pydantic.BaseModel):
    id: int = pydantic.Field(ge=1)
    peer_port: int = pydantic.Field(ge=1, le=65535)
    api_port: int = pydantic.Field(ge=1, le=65535)
    pid: int = pydantic.Field(default=0, ge=0)
    rejoin: bool = False


class _State(pydantic.BaseModel):
    """`cluster.json`, checked when read: a damaged file is an error naming the field."""

    nodes: list[_NodeState] = pydantic.Field(min_length=1)
    no_fsync: bool
    node_args: list[str] = []
    proxy_ports: dict[str, int] = {}


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
            return asyncio.run(asyncio.wait_for(_balance(self.endpoints), timeout))
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
                api = self.node(nid).api
                if _ready(api) or (nid in self.rejoining and _ready(api, urls.HEALTHZ)):
                    pending.discard(nid)
                elif not self.running(nid):
                    exited.append(nid)  # it will not get ready: say so now
            time.sleep(0.1)
        if pending:
            logs = ", ".join(str(self.data_dir / f"node-{i}.log") for i in sorted(pending))
            hints = "".join(self.stopped_because(i) for i in exited)
            why = f"nodes {exited} exited" if exited else f"not ready after {timeout}s"
            raise LocalClusterError(f"nodes {sorted(pending)}: {why}; see {logs}{hints}")

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
) -> LocalCluster:
    """Start a new cluster in `data_dir`, or restart the one there (its settings win).

    `remember=False` leaves the CLI's "last local cluster" alone (tests);
    `stop_on_failure=True` stops the nodes again if they do not get ready.
    """
    data_dir = data_dir.resolve()
    if (data_dir / STATE).exists():
        cluster = LocalCluster.load(data_dir)  # restart an existing cluster with its data
    else:
        check_shape(nodes, shards, replication)
        _writable_dir(data_dir)
        links = [(i, j) for i in range(1, nodes + 1) for j in range(1, nodes + 1) if i != j]
        ports = free_ports(2 * nodes + (len(links) if fault_proxies else 0))
        cluster = LocalCluster(
            data_dir,
            [LocalNode(i, ports[2 * i - 2], ports[2 * i - 1]) for i in range(1, nodes + 1)],
            no_fsync,
            list(node_args),
            {f"{i}>{j}": p for (i, j), p in zip(links, ports[2 * nodes :], strict=False)}
            if fault_proxies
            else {},
        )
        addrs = {n.id: NodeAddress(f"127.0.0.1:{n.peer_port}", n.api) for n in cluster.nodes}
        boot = bootstrap_map(addrs, shards=shards, replication=replication)
        (data_dir / "bootstrap.json").write_bytes(boot.encode())
        cluster.save()
    cluster.rejoining = [n.id for n in cluster.nodes if cluster.lost_its_log(n.id)]
    try:
        for n in cluster.nodes:
            cluster.start_node(n.id)
        if remember:
            LAST.parent.mkdir(parents=True, exist_ok=True)
            LAST.write_text(str(data_dir))
        cluster.wait_ready(ready_timeout)
        cluster.mark_created()  # every node has started: the store exists
    except BaseException:
        if stop_on_failure:
            cluster.shutdown(kill=True)
        raise
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


def last_endpoints() -> list[str]:
    try:
        return LocalCluster.load(Path(LAST.read_text().strip())).endpoints
    except (LocalClusterError, OSError):
        return []


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


async def _balance(endpoints: list[str]) -> dict[int, int]:
    import aiohttp  # the CLI's other local commands don't need it

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as http:

        async def get(url: str) -> Any:
            async with http.get(url) as resp:
                return await resp.json() if resp.status == 200 else None

        while True:
            views = await asyncio.gather(
                *(get(url + urls.STATUS) for url in endpoints), return_exceptions=True
            )
            shardmap = ShardMapView.model_validate(await get(endpoints[0] + urls.SHARDMAP))
            api = {n: a.api for n, a in shardmap.nodes.items()}
            preferred = {s: h[0] for s, h in shardmap.replicas.items() if h}
            leaders = _leaders(views)
            wrong = {s: p for s, p in preferred.items() if leaders.get(s) != p}
            if not wrong:
                return leaders
            for shard, target in sorted(wrong.items()):
                if shard in leaders:  # else no leader yet: look again next time
                    body = TransferLeader(shard=shard, to=target)
                    url = api[leaders[shard]] + body.path()
                    async with http.post(url, json=body.to_json()):
                        pass  # a refusal (a transfer under way) is asked again next pass
            await asyncio.sleep(0.3)


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


def _ready(api: str, probe: str = urls.READYZ) -> bool:
    try:
        with urllib.request.urlopen(api + probe, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, TimeoutError):
        return False
