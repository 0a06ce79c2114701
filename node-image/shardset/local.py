"""A real multi-process Shardset cluster on 127.0.0.1, for trying and testing.

`up` writes the bootstrap shard map (with the same placement code the operator
uses), starts one node process per node, and waits until every node reports
ready. The cluster's layout and process ids live in `<data-dir>/cluster.json`;
`~/.cache/shardset/last-local` remembers the last one started, so the CLI
finds it without `--endpoints`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from shardset_node.shardmap import NodeAddress, bootstrap_map

STATE = "cluster.json"
LAST = Path(os.environ.get("SHARDSET_CACHE", Path.home() / ".cache" / "shardset")) / "last-local"


class LocalClusterError(RuntimeError):
    pass


@dataclass
class LocalNode:
    id: int
    peer_port: int
    api_port: int
    pid: int = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass
class LocalCluster:
    data_dir: Path
    nodes: list[LocalNode]
    no_fsync: bool = False

    @property
    def endpoints(self) -> list[str]:
        return [n.api for n in self.nodes]

    def node(self, node_id: int) -> LocalNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise LocalClusterError(f"no node {node_id} in {self.data_dir}")

    def save(self) -> None:
        raw = {"nodes": [asdict(n) for n in self.nodes], "no_fsync": self.no_fsync}
        (self.data_dir / STATE).write_text(json.dumps(raw, indent=2))

    @staticmethod
    def load(data_dir: Path) -> LocalCluster:
        path = data_dir / STATE
        if not path.exists():
            raise LocalClusterError(f"no local cluster in {data_dir} (missing {STATE})")
        raw = json.loads(path.read_text())
        return LocalCluster(data_dir, [LocalNode(**n) for n in raw["nodes"]], raw["no_fsync"])

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
        ]
        if self.no_fsync:
            cmd.append("--no-fsync")
        logf = open(self.data_dir / f"node-{n.id}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, start_new_session=True
        )
        logf.close()
        n.pid = proc.pid
        self.save()

    def stop_node(self, node_id: int, *, kill: bool = False, timeout: float = 10.0) -> None:
        n = self.node(node_id)
        if n.pid and _alive(n.pid):
            os.kill(n.pid, signal.SIGKILL if kill else signal.SIGTERM)
            _wait_gone(n.pid, timeout)
        n.pid = 0
        self.save()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        pending = {n.id for n in self.nodes if n.pid}
        while pending and time.monotonic() < deadline:
            for nid in sorted(pending):
                if _ready(self.node(nid).api):
                    pending.discard(nid)
            time.sleep(0.1)
        if pending:
            logs = ", ".join(str(self.data_dir / f"node-{i}.log") for i in sorted(pending))
            raise LocalClusterError(
                f"nodes {sorted(pending)} not ready after {timeout}s; see {logs}"
            )


def up(
    data_dir: Path, nodes: int, shards: int, replication: int, *, no_fsync: bool = False
) -> LocalCluster:
    data_dir = data_dir.resolve()
    if (data_dir / STATE).exists():
        cluster = LocalCluster.load(data_dir)  # restart an existing cluster with its data
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = _free_ports(2 * nodes)
        cluster = LocalCluster(
            data_dir,
            [LocalNode(i, ports[2 * i - 2], ports[2 * i - 1]) for i in range(1, nodes + 1)],
            no_fsync,
        )
        addrs = {n.id: NodeAddress(f"127.0.0.1:{n.peer_port}", n.api) for n in cluster.nodes}
        boot = bootstrap_map(addrs, shards=shards, replication=replication)
        (data_dir / "bootstrap.json").write_bytes(boot.encode())
        cluster.save()
    for n in cluster.nodes:
        cluster.start_node(n.id)
    LAST.parent.mkdir(parents=True, exist_ok=True)
    LAST.write_text(str(data_dir))
    cluster.wait_ready()
    return cluster


def down(data_dir: Path) -> LocalCluster:
    cluster = LocalCluster.load(data_dir.resolve())
    for n in cluster.nodes:
        cluster.stop_node(n.id)
    return cluster


def last_endpoints() -> list[str]:
    if not LAST.exists():
        return []
    try:
        return LocalCluster.load(Path(LAST.read_text().strip())).endpoints
    except LocalClusterError:
        return []


def _free_ports(count: int) -> list[int]:
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


def _ready(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, TimeoutError):
        return False
