"""The two systems under test, started side by side on 127.0.0.1.

`Etcd`: three etcd members (the binary hack/cluster/build.sh builds from etcd's Go module
into ~/.cache/shardset), one data dir each, default durability (the WAL is fsynced before
a proposal is acknowledged; etcd has no switch that weakens it unless
--unsafe-no-fsync is given, which is not). `Shardset`: `shardset.local.up`'s three node
processes with N shards, replication 3, fsync on. Both keep their data dirs under the
same base directory, so on the same filesystem.

Each exposes: `pids` (server processes), `disk_counters()` (Raft entries committed and
fsyncs done, summed over members, from their Prometheus metrics), `readback(keys)`
(which acknowledged keys are missing or wrong) and `stop()`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.loadgen import value_of
from shardset.local import free_ports

REPO = Path(__file__).resolve().parent.parent


def etcd_binary() -> Path:
    """The pinned etcd, built by hack/cluster/build.sh if it is not in the cache yet."""
    env = _versions()
    cache = Path(os.environ.get("SHARDSET_CACHE", Path.home() / ".cache" / "shardset"))
    binary = cache / f"etcd-{env['ETCD_VERSION']}" / "bin" / "etcd"
    if not binary.exists():
        subprocess.run([str(REPO / "hack" / "cluster" / "build.sh"), "etcd"], check=True)
    return binary


def etcd_version() -> str:
    return _versions()["ETCD_VERSION"]


def _versions() -> dict[str, str]:
    out = {}
    for line in (REPO / "hack" / "cluster" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def _scrape(url: str, ctx: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
        return str(r.read().decode())


def etcd_pki(directory: Path, members: int) -> dict[str, str]:
    """A CA, one certificate per member (server and peer) and a client certificate,
    ECDSA P-256 like Shardset's (shardset_proto.pki); the client's paths."""
    import datetime as dt

    from shardset_proto import pki
    from shardset_proto.identity import Identity
    from shardset_proto.tlsfiles import TlsFiles

    now = dt.datetime.now(dt.UTC)
    ca = pki.issue_ca("bench.etcd", now)
    for i in range(members):
        pair = pki.issue_leaf(
            ca, Identity.node("bench.etcd", i + 1), now, dns=("localhost",), ips=("127.0.0.1",)
        )
        TlsFiles(directory / f"m{i}").write(ca.cert_pem, pair.cert_pem, pair.key_pem)
    client = TlsFiles(directory / "client")
    pair = pki.issue_leaf(ca, Identity.user("bench.etcd", "bench"), now)
    client.write(ca.cert_pem, pair.cert_pem, pair.key_pem)
    return {"cafile": str(client.ca), "cert": str(client.cert), "key": str(client.key)}


def metric_sum(text: str, name: str, label_filter: str = "") -> float:
    """Sum of every sample of `name` (whose label set contains `label_filter`)."""
    total = 0.0
    pat = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", re.M)
    for m in pat.finditer(text):
        if label_filter and label_filter not in (m.group(1) or ""):
            continue
        total += float(m.group(2))
    return total


class Etcd:
    name = "etcd"

    def __init__(self, base: Path, *, members: int = 3, tls: bool = False) -> None:
        """`tls=True`: client and peer URLs over TLS with client certificates required
        (--client-cert-auth, --peer-client-cert-auth), metrics and health on plain
        HTTP ports of their own (--listen-metrics-urls)."""
        self.binary = etcd_binary()
        self.tls = tls
        self.base = base / ("etcd-tls" if tls else "etcd")
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.mkdir(parents=True)
        ports = free_ports(3 * members)
        self.client_ports = ports[:members]
        peer_ports = ports[members : 2 * members]
        self.metrics_ports = ports[2 * members :] if tls else self.client_ports
        self.tls_paths = etcd_pki(self.base / "tls", members) if tls else {}
        scheme = "https" if tls else "http"
        cluster = ",".join(f"m{i}={scheme}://127.0.0.1:{peer_ports[i]}" for i in range(members))
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(members):
            log = open(self.base / f"m{i}.log", "wb")  # noqa: SIM115 - owned by the child
            cmd = [
                str(self.binary),
                "--name",
                f"m{i}",
                "--data-dir",
                str(self.base / f"m{i}"),
                "--listen-client-urls",
                f"{scheme}://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls",
                f"{scheme}://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls",
                f"{scheme}://127.0.0.1:{peer_ports[i]}",
                "--initial-advertise-peer-urls",
                f"{scheme}://127.0.0.1:{peer_ports[i]}",
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "shardset-bench",
                "--quota-backend-bytes",
                str(4 << 30),
                "--log-level",
                "warn",
                *self._tls_flags(i),
            ]
            self.procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            )
            log.close()
        self._wait_ready()

    def _tls_flags(self, member: int) -> list[str]:
        if not self.tls:
            return []
        d = self.base / "tls" / f"m{member}"
        crt, key, ca = str(d / "tls.crt"), str(d / "tls.key"), str(d / "ca.crt")
        return [
            "--cert-file", crt, "--key-file", key, "--trusted-ca-file", ca,
            "--client-cert-auth",
            "--peer-cert-file", crt, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth",
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_ports[member]}",
        ]  # fmt: skip

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(
                    '"health":"true"' in _scrape(f"http://127.0.0.1:{p}/health")
                    for p in self.metrics_ports
                ):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etcd not healthy after {timeout}s; see {self.base}/m*.log")

    def disk_counters(self) -> dict[str, float]:
        entries = fsyncs = 0.0
        for p in self.metrics_ports:
            text = _scrape(f"http://127.0.0.1:{p}/metrics")
            entries += metric_sum(text, "etcd_server_proposals_committed_total")
            fsyncs += metric_sum(text, "etcd_disk_wal_fsync_duration_seconds_count")
        return {"entries": entries, "fsyncs": fsyncs}

    def readback(self, keys: list[str]) -> dict[str, Any]:
        """Every key in one linearizable range scan (paged), compared with value_of."""
        import grpc

        from bench import etcdpb

        pb, g = etcdpb.load()
        want = set(keys)
        seen: dict[str, bytes] = {}
        if self.tls:
            from bench.loadgen import etcd_credentials

            creds, options = etcd_credentials(self.tls_paths)
            channel = grpc.secure_channel(self.endpoints[0], creds, options=options)
        else:
            channel = grpc.insecure_channel(self.endpoints[0])
        with channel as ch:
            stub = g.KVStub(ch)
            start = b"\0"
            while True:
                resp = stub.Range(
                    pb.RangeRequest(key=start, range_end=b"\0", limit=10_000), timeout=60
                )
                for kv in resp.kvs:
                    seen[kv.key.decode()] = bytes(kv.value)
                if not resp.more or not resp.kvs:
                    break
                start = bytes(resp.kvs[-1].key) + b"\0"
        return _check(want, seen)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


class Shardset:
    name = "shardset"

    def __init__(self, base: Path, *, shards: int, nodes: int = 3, tls: bool = False) -> None:
        """`tls=True`: `shardset local`'s TLS cluster, reached by user `bench` (role
        readwrite) with a client certificate, as etcd's clients are."""
        from shardset import local
        from shardset_proto.admin import PutUser
        from shardset_proto.identity import Role

        self.shards = shards
        self.tls = tls
        self.dir = base / f"shardset-{shards}{'-tls' if tls else ''}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.cluster = local.up(
            self.dir, nodes, shards, 3, remember=False, stop_on_failure=True, tls=tls
        )
        self.tls_paths: dict[str, str] = {}
        if tls:
            files = self.cluster.pki.user_files("bench")
            self.cluster.on_meta_leader(PutUser(name="bench", role=Role.READWRITE))
            self.tls_paths = {
                "cafile": str(files.ca),
                "cert": str(files.cert),
                "key": str(files.key),
            }
        self._wait_leaders()
        # As the operator would: leaderships spread over the nodes, not left where the
        # first elections put them.
        self.leaders = self.cluster.balance_leaders()

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.cluster.nodes]

    def _wait_leaders(self, timeout: float = 30.0) -> None:
        """Until one put per shard has gone through (every shard has a leader)."""
        from shardset.client import Client

        async def probe() -> None:
            async with Client(
                self.endpoints, timeout=10.0, attempts=60, tls=self.client_tls()
            ) as c:
                await c.put("warm", b"x")
                route = c._route
                keys: dict[int, str] = {}
                i = 0
                while len(keys) < len(route.replicas) and i < 100_000:
                    k = f"w{i}"
                    keys.setdefault(route.shard_of(k), k)
                    i += 1
                await asyncio.gather(*(c.put(k, b"x") for k in keys.values()))

        asyncio.run(asyncio.wait_for(probe(), timeout))

    def client_tls(self) -> Any:
        """The ClientTls of user `bench` (None without TLS)."""
        from shardset.clienttls import ClientTls

        if not self.tls_paths:
            return None
        t = self.tls_paths
        return ClientTls(cafile=Path(t["cafile"]), cert=Path(t["cert"]), key=Path(t["key"]))

    def disk_counters(self) -> dict[str, float]:
        entries = fsyncs = 0.0
        ctx = self.cluster.operator_ssl()
        for url in self.endpoints:
            text = _scrape(f"{url}/metrics", ctx)
            entries += metric_sum(text, "shardset_raft_commit_index")
            fsyncs += metric_sum(text, "shardset_disk_syncs_total") or metric_sum(
                text, "shardset_disk_syncs"
            )
        return {"entries": entries, "fsyncs": fsyncs}

    def readback(self, keys: list[str]) -> dict[str, Any]:
        """Every key through the shards' scans (linearizable, paged), compared."""
        from shardset.client import Client

        want = set(keys)
        seen: dict[str, bytes] = {}

        async def scan_all() -> None:
            async with Client(self.endpoints, timeout=60.0, tls=self.client_tls()) as c:
                start = ""
                while True:
                    page = await c.scan(start, None, limit=5_000)
                    for k, v in page:
                        seen[k] = v
                    if len(page) < 5_000:
                        return
                    start = page[-1][0] + "\0"

        asyncio.run(scan_all())
        return _check(want, seen)

    def stop(self) -> None:
        self.cluster.shutdown(kill=False, timeout=15.0)


def _check(want: set[str], seen: dict[str, bytes]) -> dict[str, Any]:
    missing = sorted(k for k in want if k not in seen)
    wrong = sorted(k for k in want if k in seen and seen[k] != value_of(k))
    return {
        "acknowledged": len(want),
        "missing": len(missing),
        "wrong_value": len(wrong),
        "examples": (missing + wrong)[:5],
        "ok": not missing and not wrong,
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) so far."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
