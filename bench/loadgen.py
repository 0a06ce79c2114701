"""The load generator: persistent worker processes, each an asyncio loop of clients.

One `LoadGen` drives either system through a `Driver` (Shardset with
`shardset.client.Client`, over its binary wire protocol or HTTP; etcd over gRPC with the
vendored KV stubs). A point is a list of `Job`s, one per worker process; every worker
starts at the same wall-clock instant, runs a warm-up, then a measured window, and sends
back its latencies, errors and the keys whose writes were acknowledged (for the read-back check).

Closed loop: each client sends its next request when the previous one is answered;
latency is from send to answer. Open loop: requests are scheduled at a fixed rate and
latency is measured from the *scheduled* send time, so a stall shows up in the latency of
every request it delayed (no coordinated omission). In-flight requests are capped per
worker; a request that finds the cap reached is not sent and counts as `shed`.

Keys are 8 ASCII bytes, unique per write: 3 characters of run tag, 1 of worker, 4 of
counter (base 36). Values are 256 bytes derived from the key (`value_of`), so a read can
check what it got and the read-back needs only the list of acknowledged keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
KEY_BYTES = 8
VALUE_BYTES = 256
INFLIGHT_CAP = 2048


def b36(n: int, width: int) -> str:
    if not 0 <= n < 36**width:
        raise ValueError(f"{n} does not fit {width} base-36 digits")
    out = []
    for _ in range(width):
        n, d = divmod(n, 36)
        out.append(B36[d])
    return "".join(reversed(out))


def make_key(tag: str, worker: int, counter: int) -> str:
    key = tag + b36(worker, 1) + b36(counter, 4)
    assert len(key) == KEY_BYTES
    return key


def value_of(key: str) -> bytes:
    raw = key.encode()
    return (raw * (VALUE_BYTES // len(raw) + 1))[:VALUE_BYTES]


@dataclass
class Job:
    system: str  # "shardset" | "etcd"
    endpoints: list[str]  # shardset: every node's API URL; etcd: this worker's host:port
    worker: int
    clients: int
    op: str  # "put" | "get_lin" | "get_stale" | "mix"
    start_at: float  # wall clock (time.time()) at which every worker begins
    warmup: float
    measure: float
    tag: str
    mode: str = "closed"  # "closed" | "open"
    rate: float = 0.0  # open loop: requests per second from this worker
    count: int = 0  # closed loop: end the window after this many measured ops (0: by time)
    read_fraction: float = 0.0  # mix: share of (linearizable) reads
    read_keys: list[str] = field(default_factory=list)
    seed: int = 0
    protocol: str = "wire"  # shardset: the client protocol, "wire" (binary) or "http"
    # TLS with a client certificate: {"cafile", "cert", "key"} paths; empty: plain TCP.
    tls: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    worker: int
    latencies: array  # seconds, ops whose send (or scheduled send) fell in the window
    errors: int = 0
    shed: int = 0
    bad_values: int = 0
    error_samples: list[str] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)  # every acknowledged put, warm-up too
    window: float = 0.0  # measured seconds
    window_start: float = 0.0  # wall clock


class Driver(Protocol):
    async def put(self, key: str, value: bytes) -> None: ...

    async def get(self, key: str, linearizable: bool) -> bytes | None: ...

    async def close(self) -> None: ...


class ShardsetDriver:
    def __init__(
        self, endpoints: list[str], protocol: str = "wire", tls: dict[str, str] | None = None
    ) -> None:
        from pathlib import Path

        import aiohttp

        from shardset.client import Client
        from shardset.clienttls import ClientTls

        client_tls = (
            ClientTls(cafile=Path(tls["cafile"]), cert=Path(tls["cert"]), key=Path(tls["key"]))
            if tls
            else None
        )
        ctx = client_tls.context() if client_tls is not None else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ctx if ctx is not None else True),
            timeout=aiohttp.ClientTimeout(total=10.0),
        )
        self._client = Client(
            endpoints, session=self._session, timeout=10.0, protocol=protocol, tls=client_tls
        )

    async def put(self, key: str, value: bytes) -> None:
        await self._client.put(key, value)

    async def get(self, key: str, linearizable: bool) -> bytes | None:
        r = await self._client.get(key, consistency="linearizable" if linearizable else "eventual")
        return r.value

    async def close(self) -> None:
        await self._client.close()
        await self._session.close()


class EtcdDriver:
    def __init__(self, endpoint: str, tls: dict[str, str] | None = None) -> None:
        import grpc

        from bench import etcdpb

        self._pb, grpc_mod = etcdpb.load()
        if tls:
            creds, options = etcd_credentials(tls)
            self._channel = grpc.aio.secure_channel(endpoint, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(endpoint)
        self._stub = grpc_mod.KVStub(self._channel)

    async def put(self, key: str, value: bytes) -> None:
        await self._stub.Put(self._pb.PutRequest(key=key.encode(), value=value), timeout=10.0)

    async def get(self, key: str, linearizable: bool) -> bytes | None:
        resp = await self._stub.Range(
            self._pb.RangeRequest(key=key.encode(), serializable=not linearizable), timeout=10.0
        )
        return bytes(resp.kvs[0].value) if resp.kvs else None

    async def close(self) -> None:
        await self._channel.close()


def etcd_credentials(tls: dict[str, str]) -> tuple[Any, list[tuple[str, str]]]:
    """gRPC channel credentials with our client certificate, and the options that check
    the member's certificate for `localhost` (its SANs: localhost and 127.0.0.1)."""
    from pathlib import Path

    import grpc

    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(tls["cafile"]).read_bytes(),
        private_key=Path(tls["key"]).read_bytes(),
        certificate_chain=Path(tls["cert"]).read_bytes(),
    )
    return creds, [("grpc.ssl_target_name_override", "localhost")]


def make_driver(job: Job) -> Driver:
    if job.system == "shardset":
        return ShardsetDriver(job.endpoints, job.protocol, job.tls)
    if job.system == "etcd":
        return EtcdDriver(job.endpoints[0], job.tls)
    raise ValueError(f"unknown system {job.system!r}")


async def run_job(job: Job, driver: Driver | None = None) -> Result:
    own = driver is None
    drv = driver if driver is not None else make_driver(job)
    rng = random.Random(job.seed)
    res = Result(job.worker, array("d"))
    counter = 0
    perf0 = time.perf_counter()
    wall0 = time.time()
    start = perf0 + max(0.0, job.start_at - wall0)
    m_start = start + job.warmup
    m_end = m_start + job.measure
    done_measured = 0
    last_end = m_start

    def next_key() -> str:
        nonlocal counter
        counter += 1
        return make_key(job.tag, job.worker, counter)

    def pick_op() -> str:
        if job.op == "mix":
            return "get_lin" if rng.random() < job.read_fraction else "put"
        return job.op

    async def one(op: str, t_from: float) -> None:
        nonlocal done_measured, last_end
        measured = m_start <= t_from < m_end
        key = next_key() if op == "put" else rng.choice(job.read_keys)
        try:
            if op == "put":
                await drv.put(key, value_of(key))
                res.acked.append(key)
            else:
                got = await drv.get(key, linearizable=op == "get_lin")
                if got != value_of(key):
                    res.bad_values += 1
                    raise RuntimeError(f"read {key}: wrong value ({got!r:.40})")
        except Exception as e:
            if measured:
                res.errors += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(f"{e.__class__.__name__}: {e}"[:300])
            return
        t_done = time.perf_counter()
        if measured:
            res.latencies.append(t_done - t_from)
            done_measured += 1
            last_end = max(last_end, t_done)

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    if job.mode == "closed":
        by_count = job.count > 0

        async def client() -> None:
            while True:
                now = time.perf_counter()
                if by_count:
                    if now >= m_start and done_measured >= job.count:
                        return
                elif now >= m_end:
                    return
                await one(pick_op(), now)

        if by_count:
            m_end = float("inf")
        await asyncio.gather(*(client() for _ in range(job.clients)))
        res.window = (last_end - m_start) if by_count else job.measure
    else:
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / job.rate
        i = 0
        while True:
            sched = start + i * interval
            if sched >= m_end:
                break
            i += 1
            delay = sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 32 == 0:
                await asyncio.sleep(0)
            if len(tasks) >= INFLIGHT_CAP:
                if m_start <= sched < m_end:
                    res.shed += 1
                continue
            t = asyncio.create_task(one(pick_op(), sched))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15.0)
        res.window = job.measure
    res.window_start = wall0 + (m_start - perf0)
    if own:
        await drv.close()
    return res


# --- worker processes -------------------------------------------------------------------
def _serve(conn: Connection) -> None:
    """A worker: one event loop for its lifetime, and one driver per cluster it has been
    pointed at, kept across jobs (connections stay warm, set-up stays out of windows)."""
    loop = asyncio.new_event_loop()
    drivers: dict[tuple[Any, ...], Driver] = {}

    async def make(job: Job) -> Driver:
        return make_driver(job)

    try:
        while True:
            job = conn.recv()
            if job is None:
                return
            key = (job.system, job.protocol, tuple(job.endpoints), tuple(sorted(job.tls.items())))
            try:
                if key not in drivers:
                    drivers[key] = loop.run_until_complete(make(job))
                conn.send(loop.run_until_complete(run_job(job, drivers[key])))
            except Exception as e:
                conn.send(RuntimeError(f"worker {job.worker}: {e!r}"))
    finally:
        for d in drivers.values():
            with contextlib.suppress(Exception):
                loop.run_until_complete(d.close())
        loop.close()


class LoadGen:
    """`processes` persistent worker processes (spawned, so no gRPC state is forked)."""

    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(child,), daemon=True)
            p.start()
            self._conns.append(parent)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

    def run(
        self, jobs: list[Job], during: Callable[[], Awaitable[None]] | None = None
    ) -> list[Result]:
        if len(jobs) > len(self._conns):
            raise ValueError(f"{len(jobs)} jobs for {len(self._conns)} workers")
        for conn, job in zip(self._conns, jobs, strict=False):
            conn.send(job)
        if during is not None:
            asyncio.run(during())
        out: list[Result] = []
        for conn, _ in zip(self._conns, jobs, strict=False):
            r = conn.recv()
            if isinstance(r, Exception):
                raise r
            out.append(r)
        return out

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def split(total: int, parts: int) -> list[int]:
    """`total` clients over at most `parts` workers, as evenly as possible, no zeros."""
    n = max(1, min(parts, total))
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]
