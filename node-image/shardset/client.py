"""The Shardset client: routes each key to its shard's leader and retries safely.

It caches the shard map (slots to shards, shards to replicas, node addresses)
and the leader of each shard. A request that reaches a node without the
shard's leader comes back as a 307 redirect naming the leader; the client
follows it and remembers. A stale map (409) is refetched. A node whose disk is full
(507) hands its leaderships off: the map is refetched and the write goes to the new
leader. A replica that cannot answer (503: no leader, `replica_corrupt`, `node_failed`)
or be reached is left for another one. Writes carry an
idempotency key that stays the same across retries, so a retried put is
applied once even if the first attempt's answer was lost.

Two protocols carry the same operations and answers: HTTP/1.1 with JSON (the default;
what curl and the Kubernetes Services speak) and the binary wire protocol
(`protocol="wire"`, shardset_proto.wire): msgpack over one pipelined TCP connection per
node, on the node's peer port, which costs a fraction of HTTP's CPU per operation. The
shard map always comes over HTTP.

Reads take a consistency mode (docs/consistency.md). Linearizable and lease reads go to
the leader; bounded, session and eventual reads go to any replica (a random one, or the
one asked for), which serves them or redirects to the leader. A Client is one session:
it remembers, per shard, the highest Raft index it wrote or read (`session_token`) and
sends it with session reads, so it reads its own writes and never goes back in time.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from shardset import tlserrors
from shardset.clienttls import ClientTls
from shardset.errors import ShardsetError as ShardsetError  # re-exported: its old home
from shardset.neterrors import describe
from shardset_proto import urls, wire
from shardset_proto.commands import MAX_KEY_BYTES
from shardset_proto.consistency import LEADER_MODES, MODES
from shardset_proto.framing import MAX_CLIENT_FRAME, FrameError, FrameReader
from shardset_proto.limits import MAX_REQUESTS_PER_FRAME
from shardset_proto.slots import slot_of
from shardset_proto.status import ShardMapView

RETRYABLE = {307, 409, 421, 503, 507}
# 507 insufficient_storage: that node's disk is full (it refuses writes and hands its
# leaderships off); the shard's other replicas may well take the write.
FULL_DISK = 507
PROTOCOLS = ("http", "wire")
# What an attempt at one node may raise that means "try another replica".
_TRANSIENT = (aiohttp.ClientError, TimeoutError, ConnectionError, OSError)

Answer = tuple[int, dict[str, Any]]  # (HTTP-style status, body)
Attempt = Callable[[int], Awaitable[Answer]]  # one try at a node id


@dataclass
class ReadResult:
    key: str
    value: bytes | None
    shard: int
    index: int
    epoch: int
    consistency: str = "linearizable"
    replica: int = 0
    staleness_ms: float | None = None  # bounded reads: the staleness the replica proved


@dataclass
class WriteResult:
    shard: int
    index: int
    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Route:
    epoch: int = 0
    slots: list[tuple[int, int, int]] = field(default_factory=list)
    replicas: dict[int, list[int]] = field(default_factory=dict)
    api: dict[int, str] = field(default_factory=dict)
    wire: dict[int, str] = field(default_factory=dict)  # host:port, where wire is served
    wire_tls: dict[int, bool] = field(default_factory=dict)  # a separate (TLS) wire port
    leaders: dict[int, int] = field(default_factory=dict)

    def shard_of(self, key: str) -> int:
        slot = slot_of(key.encode())
        for start, end, shard in self.slots:
            if start <= slot < end:
                return shard
        raise ShardsetError(f"no shard owns slot {slot} in shard map epoch {self.epoch}")


CONNECT_TIMEOUT_S = 1.0  # a TCP connect to a live node takes milliseconds


class Client:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        attempts: int = 20,
        session: aiohttp.ClientSession | None = None,
        protocol: str = "http",
        tls: ClientTls | None = None,
    ) -> None:
        """`tls`: the CA, client certificate and token for a TLS store (None: plain
        HTTP and TCP, for an insecure store). HTTPS is used for https:// endpoints and
        the addresses the shard map gives; the wire protocol speaks TLS to nodes whose
        map entry has a separate wire port."""
        if not endpoints:
            raise ShardsetError("no endpoints: pass --endpoints or set SHARDSET_ENDPOINTS")
        if protocol not in PROTOCOLS:
            raise ShardsetError(f"protocol must be one of {', '.join(PROTOCOLS)}: {protocol!r}")
        self.protocol = protocol
        self.tls = tls
        # Built now: a CA or key file that does not load, or our certificate expired,
        # is said before any request (and not as a dropped connection).
        self._ssl: ssl.SSLContext | None = tls.context() if tls is not None else None
        self._conns: dict[int, _WireConn] = {}
        self._dialing: dict[int, asyncio.Task[_WireConn]] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.attempts = attempts
        self._session = session
        self._own_session = session is None
        self._route = _Route()
        self._client_id = base64.urlsafe_b64encode(os.urandom(9)).decode()
        self._seq = itertools.count(1)
        # The session token: shard -> highest Raft index written or read in this session.
        self.session_token: dict[int, int] = {}

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        # Their reader tasks end once the cancellation is delivered: wait for that, so
        # a loop closed right after this does not destroy them pending.
        await asyncio.gather(*(conn.wait_closed() for conn in conns))
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # A node that is gone (a pod deleted on scale-down, its address unrouted)
            # fails the connect instead of eating the whole request timeout.
            limit = aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=min(CONNECT_TIMEOUT_S, self.timeout)
            )
            headers = {}
            if self.tls is not None and self.tls.token:
                headers["Authorization"] = f"Bearer {self.tls.token}"
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(
                timeout=limit, headers=headers, connector=connector
            )
        return self._session

    # --- public operations --------------------------------------------------------
    async def put(self, key: str, value: bytes) -> WriteResult:
        if self.protocol == "wire":
            body = await self._wired(key, lambda idem: wire.put(key, value, idem))
        else:
            body = await self._keyed("PUT", key, data=value, idem=True)
        return self._seen(_write(body))

    async def delete(self, key: str) -> WriteResult:
        if self.protocol == "wire":
            body = await self._wired(key, lambda idem: wire.delete(key, idem))
        else:
            body = await self._keyed("DELETE", key, idem=True)
        return self._seen(_write(body))

    async def cas(self, key: str, expected: bytes | None, value: bytes | None) -> WriteResult:
        if self.protocol == "wire":
            body = await self._wired(key, lambda idem: wire.cas(key, expected, value, idem))
        else:
            payload = {"expected": _b64(expected), "value": _b64(value)}
            body = await self._keyed("POST", key, json=payload, idem=True, path=urls.CAS)
        return self._seen(_write(body))

    async def get(
        self,
        key: str,
        *,
        consistency: str | None = None,
        max_staleness_ms: int | None = None,
        replica: int | None = None,
    ) -> ReadResult:
        """Read `key`. `consistency` None lets the serving node's default decide (which
        may be any mode); `replica` asks a given node first (for bounded, session and
        eventual reads, which any replica may serve)."""
        if consistency is not None and consistency not in MODES:
            raise ShardsetError(f"consistency must be one of {', '.join(MODES)}: {consistency!r}")
        if max_staleness_ms is not None and max_staleness_ms <= 0:
            raise ShardsetError(f"max_staleness_ms must be positive, got {max_staleness_ms}")
        _check_key(key)
        params: dict[str, str] = {}
        if consistency:
            params["consistency"] = consistency
        if max_staleness_ms is not None:
            params["max_staleness_ms"] = str(max_staleness_ms)
        await self._ensure_map()
        shard = self._route.shard_of(key)
        token = self.session_token.get(shard, 0)
        if token:
            params["min_index"] = str(token)
        anywhere = consistency is not None and consistency not in LEADER_MODES
        replica = self._first_replica(shard, replica, anywhere)
        if self.protocol == "wire":
            body = await self._wired(
                key,
                lambda _: wire.get(key, consistency, max_staleness_ms, token),
                idem=False,
                missing_ok=True,
                target=replica,
                from_leader=not anywhere,
            )
        else:
            body = await self._keyed(
                "GET",
                key,
                params=params,
                missing_ok=True,
                target=replica,
                from_leader=not anywhere,
            )
        value = body.get("value")
        result = ReadResult(
            key=key,
            value=value if value is None or isinstance(value, bytes) else base64.b64decode(value),
            shard=int(body["shard"]),
            index=int(body["index"]),
            epoch=int(body["epoch"]),
            consistency=str(body.get("consistency", "linearizable")),
            replica=int(body.get("replica", 0)),
            staleness_ms=None if body.get("staleness_ms") is None else float(body["staleness_ms"]),
        )
        self._note(result.shard, result.index)
        return result

    def _first_replica(self, shard: int, replica: int | None, anywhere: bool) -> int | None:
        """The node a read asks first: the one asked for, which must hold the shard (else
        another node would quietly serve it), else any replica if any may serve."""
        if replica is None:
            return self._any_replica(shard) if anywhere else None
        holders = sorted(self._route.replicas.get(shard, []))
        if replica not in holders:
            nodes = ", ".join(map(str, sorted(self._route.api)))
            raise ShardsetError(
                f"replica {replica}: shard {shard} has replicas on nodes "
                f"{', '.join(map(str, holders))} (the store's nodes: {nodes})",
                400,
            )
        return replica

    def _seen(self, w: WriteResult) -> WriteResult:
        self._note(w.shard, w.index)
        return w

    def _note(self, shard: int, index: int) -> None:
        if index > self.session_token.get(shard, 0):
            self.session_token[shard] = index

    async def scan(
        self, start: str = "", end: str | None = None, limit: int = 1000
    ) -> list[tuple[str, bytes]]:
        """Keys in [start, end) in key order, across every shard."""
        await self._ensure_map()
        params = {"start": start, "limit": str(limit)}
        if end is not None:
            params["end"] = end
        results: list[tuple[str, bytes]] = []
        for shard in sorted(self._route.replicas):
            body = await self._request(
                "GET", shard, urls.SCAN, params={**params, "shard": str(shard)}
            )
            results.extend((k, base64.b64decode(v)) for k, v in body["items"])
        results.sort()
        return results[:limit]

    async def status(self) -> dict[str, Any]:
        """Every node's view of its replicas (role, term, commit, applied, lag)."""
        await self._ensure_map()
        out: dict[str, Any] = {"epoch": self._route.epoch, "nodes": {}}
        for node, url in sorted(self._route.api.items()):
            try:
                async with self._http().get(url + urls.STATUS) as resp:
                    body = await _json(resp)
            except (aiohttp.ClientError, TimeoutError) as e:
                await self._raise_tls_failure(e, url)
                out["nodes"][str(node)] = {"error": f"cannot reach node at {url}: {describe(e)}"}
                continue
            self._raise_refusal(resp.status, body, f"status of node {node}")
            out["nodes"][str(node)] = body
        return out

    # --- routing --------------------------------------------------------------------
    async def _keyed(
        self,
        method: str,
        key: str,
        *,
        idem: bool = False,
        missing_ok: bool = False,
        path: str = urls.KV,
        **kw: Any,
    ) -> dict[str, Any]:
        _check_key(key)
        await self._ensure_map()
        headers = {"Idempotency-Key": f"{self._client_id}:{next(self._seq)}"} if idem else {}
        shard = self._route.shard_of(key)
        return await self._request(
            method,
            shard,
            path + quote(key, safe=""),
            headers=headers,
            missing_ok=missing_ok,
            key=key,
            **kw,
        )

    async def _wired(
        self,
        key: str,
        request: Callable[[str | None], list[Any]],
        *,
        idem: bool = True,
        missing_ok: bool = False,
        target: int | None = None,
        from_leader: bool = True,
    ) -> dict[str, Any]:
        """One keyed operation over the wire protocol; `request(idempotency key)` gives
        the request's fields after its id (the key stays the same across retries)."""
        _check_key(key)
        await self._ensure_map()
        fields = request(f"{self._client_id}:{next(self._seq)}" if idem else None)

        async def attempt(node: int) -> Answer:
            conn = await self._wire_conn(node)
            return await conn.call(fields, self.timeout)

        shard = self._route.shard_of(key)
        return await self._retrying(
            f"{fields[0]} {key!r}",
            shard,
            attempt,
            missing_ok=missing_ok,
            key=key,
            target=target,
            from_leader=from_leader,
        )

    async def _request(
        self,
        method: str,
        shard: int,
        path: str,
        *,
        missing_ok: bool = False,
        key: str | None = None,
        target: int | None = None,
        from_leader: bool = True,
        **kw: Any,
    ) -> dict[str, Any]:
        """One HTTP request about `shard` (see _retrying)."""
        params = kw.pop("params", {})  # sent with every attempt, redirects included

        async def attempt(node: int) -> Answer:
            url = self._route.api.get(node, self.endpoints[0])
            async with self._http().request(
                method,
                url + path,
                allow_redirects=False,
                params={**params, "epoch": str(self._route.epoch)},
                **kw,
            ) as resp:
                return resp.status, await _json(resp)

        return await self._retrying(
            f"{method} {path}",
            shard,
            attempt,
            missing_ok=missing_ok,
            key=key,
            target=target,
            from_leader=from_leader,
        )

    async def _retrying(
        self,
        what: str,
        shard: int,
        attempt: Attempt,
        *,
        missing_ok: bool,
        key: str | None,
        target: int | None,
        from_leader: bool,
    ) -> dict[str, Any]:
        """Try `target` (default: the shard's leader as far as known), following
        redirects and moving to another replica when a node cannot be reached.
        `from_leader=False`: the answer may come from a follower, so it does not teach
        which node leads."""
        last: ShardsetError | None = None
        if target is None:
            target = self._node_for(shard)
        for n in range(self.attempts):
            try:
                status, body = await attempt(target)
                if status == 200 or (status == 404 and missing_ok):
                    if from_leader and body.get("consistency", "linearizable") in LEADER_MODES:
                        self._route.leaders[shard] = int(body.get("replica", target))
                    if int(body.get("epoch", 0)) > self._route.epoch:
                        await self._refresh_map()  # the layout moved on: learn it
                    return body
                message = str(body.get("message", f"status {status}"))
                self._raise_refusal(status, body, what)
                if status not in RETRYABLE:
                    raise ShardsetError(f"{what}: {message}", status, body)
                last = ShardsetError(message, status, body)
                target = await self._reroute(status, body, shard, key, target)
            except _TRANSIENT as e:
                await self._raise_tls_failure(e, self._address(target))
                last = ShardsetError(f"{what}: cannot reach node {target}: {describe(e)}")
                target = self._other_replica(shard, target)
            await asyncio.sleep(min(0.5, 0.02 * (2**n)) * random.uniform(0.5, 1.0))
        raise last or ShardsetError(f"{what}: out of attempts")

    def _address(self, node: int) -> str:
        """Where an attempt at `node` goes: its API URL, or its wire address."""
        if self.protocol == "wire":
            return self._route.wire.get(node, "")
        return self._route.api.get(node, self.endpoints[0])

    def _raise_refusal(self, status: int, body: dict[str, Any], what: str) -> None:
        """401 and 403 are final: raise the error naming what was refused and why."""
        tls = self.tls or ClientTls()
        named = tlserrors.from_answer(status, body, what, token=bool(tls.token), cert=tls.has_cert)
        if named is not None:
            raise named

    async def _raise_tls_failure(self, error: BaseException, where: str) -> None:
        """A failed TLS handshake is no node being down: raise its named error rather
        than trying another replica (they all share the CA and the names' scheme)."""
        if self.tls is None or not where:
            return
        parts = urlsplit(where if "://" in where else f"tls://{where}")
        if parts.hostname is None:
            return
        port = parts.port or (443 if parts.scheme == "https" else 0)
        cafile = self.tls.cafile
        named = await tlserrors.diagnose(error, where, parts.hostname, port, cafile)
        if named is not None:
            raise named from None

    async def _wire_conn(self, node: int) -> _WireConn:
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        dialing = self._dialing.get(node)
        if dialing is None:  # one dial per node, shared by every request waiting for it
            addr = self._route.wire.get(node)
            if addr is None:
                raise ConnectionError(f"node {node} has no wire address in the shard map")
            secure = self._route.wire_tls.get(node, False) and self._ssl is not None
            dialing = asyncio.ensure_future(
                _WireConn.open(
                    addr,
                    min(CONNECT_TIMEOUT_S, self.timeout),
                    ssl_context=self._ssl if secure else None,
                    token=self._wire_token() if secure else None,
                )
            )
            self._dialing[node] = dialing
            dialing.add_done_callback(lambda _: self._dialing.pop(node, None))
        conn = await asyncio.shield(dialing)
        self._conns[node] = conn
        return conn

    def _wire_token(self) -> str | None:
        """The token a wire connection authenticates with: only without a client
        certificate (the certificate says who we are in the handshake)."""
        if self.tls is None or self.tls.has_cert:
            return None
        return self.tls.token

    async def _reroute(
        self, status: int, body: dict[str, Any], shard: int, key: str | None, current: int
    ) -> int:
        if status == 307 and body.get("leader"):
            leader = int(body["leader"])
            self._route.leaders[shard] = leader
            return leader
        if status == FULL_DISK:
            return await self._away_from_full_disk(shard, key, current)
        if status == 409:  # the shard map moved on: refetch, re-route the key
            await self._refresh_map()
            if key is not None:
                shard = self._route.shard_of(key)
            return self._node_for(shard)
        return self._other_replica(shard, current)

    async def _away_from_full_disk(self, shard: int, key: str | None, full: int) -> int:
        """Node `full` refused a write for lack of space (507) and hands its leaderships
        to other voters: treated like a leader that moved. The map is fetched again
        (it names the leaders as the nodes know them) and the retry goes to the shard's
        new leader, or, while none other is known, to another replica (which redirects
        to the leader or answers 503 until one is elected). Same request, same
        Idempotency-Key: a write the full node may have proposed is applied once."""
        if self._route.leaders.get(shard) == full:
            self._route.leaders.pop(shard, None)
        try:
            await self._refresh_map()
        except ShardsetError:  # no node answered: the map we hold still names replicas
            return self._other_replica(shard, full)
        if key is not None:
            shard = self._route.shard_of(key)
        leader = self._route.leaders.get(shard)
        if leader is not None and leader != full:
            return leader
        return self._other_replica(shard, full)

    def _node_for(self, shard: int) -> int:
        leader = self._route.leaders.get(shard)
        if leader is not None:
            return leader
        replicas = self._route.replicas.get(shard) or list(self._route.api)
        return replicas[0]

    def _any_replica(self, shard: int) -> int:
        return random.choice(self._route.replicas.get(shard) or list(self._route.api))

    def _other_replica(self, shard: int, current: int) -> int:
        replicas = self._route.replicas.get(shard) or list(self._route.api)
        others = [r for r in replicas if r != current] or replicas
        self._route.leaders.pop(shard, None)
        return random.choice(others)

    async def _ensure_map(self) -> None:
        if not self._route.slots:
            await self._refresh_map()

    async def _refresh_map(self) -> None:
        """Learn the shard map again. Concurrent callers (every request of a fresh
        client, or all those that saw a newer epoch) share one fetch."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._fetch_any_map())
            self._refreshing.add_done_callback(self._refreshed)
        await asyncio.shield(self._refreshing)

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved here; each waiter gets it through the shield

    async def _fetch_any_map(self) -> None:
        """Ask every known node and endpoint at once; the first answer wins. Asking one
        after another would wait out each node that is gone (a scaled-down pod)."""
        apis = list(dict.fromkeys([*self._route.api.values(), *self.endpoints]))
        errors: list[str] = []
        pending = {asyncio.ensure_future(self._fetch_map(url)): url for url in apis}
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    pending.pop(task)
                    raw, error = task.result()
                    if raw is not None:
                        self._route = _parse_map(raw)
                        return
                    errors.append(error)
        finally:
            for task in pending:
                task.cancel()
        raise ShardsetError("cannot fetch the shard map: " + "; ".join(errors))

    async def _fetch_map(self, url: str) -> tuple[dict[str, Any] | None, str]:
        """The map from one node, or why not; a refusal (401, 403) or a TLS failure
        raises its named error: every node would say the same."""
        try:
            async with self._http().get(url + urls.SHARDMAP) as resp:
                body = await _json(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            await self._raise_tls_failure(e, url)
            hint = ""
            if url.startswith("http://") and isinstance(e, aiohttp.ServerDisconnectedError):
                hint = " (a TLS node? use its https:// URL and --cacert, not --insecure)"
            return None, f"cannot reach node at {url}: {describe(e)}{hint}"
        self._raise_refusal(status, body, f"GET {urls.SHARDMAP} at {url}")
        if status != 200:
            return None, f"node at {url} answered HTTP {status}"
        return body, ""


def _parse_map(raw: dict[str, Any]) -> _Route:
    view = ShardMapView.model_validate(raw)
    return _Route(
        epoch=view.epoch,
        slots=list(view.slots),
        replicas=view.replicas,
        api={n: a.api for n, a in view.nodes.items()},
        wire={n: a.wire or a.peer for n, a in view.nodes.items()},
        wire_tls={n: bool(a.wire) for n, a in view.nodes.items()},
        leaders={s: n for s, n in view.leaders.items() if n},
    )


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {"message": f"HTTP {resp.status} with a non-JSON body"}
    return body if isinstance(body, dict) else {"message": str(body)}


def _write(body: dict[str, Any]) -> WriteResult:
    core = {"shard", "index", "epoch"}
    return WriteResult(
        shard=int(body["shard"]),
        index=int(body["index"]),
        epoch=int(body["epoch"]),
        extra={k: v for k, v in body.items() if k not in core},
    )


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _check_key(key: str) -> None:
    size = len(key.encode())
    if not 0 < size <= MAX_KEY_BYTES:
        raise ShardsetError(f"key must be 1 to {MAX_KEY_BYTES} bytes of UTF-8, got {size}")


async def _next_frame(frames: FrameReader, addr: str, timeout: float) -> list[bytes]:
    """The payloads of the next frame that holds any; ConnectionError if none comes."""
    payloads: list[bytes] | None = []
    while not payloads:
        payloads = await asyncio.wait_for(frames.read(), timeout)
        if payloads is None:
            raise ConnectionError(f"{addr} closed the connection during the hello")
    return payloads


_SWEEP_S = 0.25  # how often a wire connection looks for requests past their deadline


class _WireConn:
    """One pipelined wire-protocol connection to a node (shardset_proto.wire). Requests
    made in one event-loop iteration leave in one frame; answers come back by id."""

    def __init__(
        self, writer: asyncio.StreamWriter, frames: FrameReader, first_id: int = 1
    ) -> None:
        self._writer = writer
        self._frames = frames
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(first_id)
        self._pending: dict[int, tuple[asyncio.Future[Answer], float]] = {}
        self._out: list[list[Any]] = []
        self._flush_scheduled = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False
        self._task = self._loop.create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        addr: str,
        timeout: float,
        *,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> _WireConn:
        """Connect, say hello and, with a token, authenticate (request id 1: the
        connection's own requests start at 2)."""
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        dial = asyncio.open_connection(
            host, int(port), ssl=ssl_context, server_hostname=host if ssl_context else None
        )
        reader, writer = await asyncio.wait_for(dial, timeout)
        frames = FrameReader(reader, limit=MAX_CLIENT_FRAME)
        try:
            writer.write(wire.hello(wire.VERSION, 0))
            version, _ = wire.parse_hello((await _next_frame(frames, addr, timeout))[0])
            if version != wire.VERSION:
                raise ConnectionError(f"{addr} speaks wire version {version}, not {wire.VERSION}")
            if token is not None:
                writer.write(wire.encode_batch([[1, *wire.auth(token)]]))
                answers = wire.decode_batch((await _next_frame(frames, addr, timeout))[0])
                _, status, body = answers[0]
                if status != 200:
                    raise tlserrors.from_answer(
                        status, body, f"wire auth at {addr}", token=True, cert=False
                    ) or ConnectionError(f"{addr} answered auth with {status}: {body}")
        except FrameError as e:
            writer.close()
            raise ConnectionError(f"{addr}: {e}") from None
        except BaseException:
            writer.close()
            raise
        return cls(writer, frames, first_id=2)

    def call(self, fields: list[Any], timeout: float) -> asyncio.Future[Answer]:
        if self.closed:
            raise ConnectionError("wire connection closed")
        rid = next(self._ids)
        fut: asyncio.Future[Answer] = self._loop.create_future()
        self._pending[rid] = (fut, self._loop.time() + timeout)
        self._out.append([rid, *fields])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(_SWEEP_S, self._sweep)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not self.closed:
            # A node refuses a frame of more than MAX_REQUESTS_PER_FRAME requests.
            for data in wire.encode_batches(out, MAX_REQUESTS_PER_FRAME):
                self._writer.write(data)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        for rid, (fut, deadline) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[rid]
                if not fut.done():
                    fut.set_exception(TimeoutError("no answer within the request timeout"))
        if self._pending and not self.closed:
            self._sweeper = self._loop.call_later(_SWEEP_S, self._sweep)

    async def _read_loop(self) -> None:
        error: BaseException = ConnectionError("the node closed the wire connection")
        try:
            while True:
                payloads = await self._frames.read()
                if payloads is None:
                    break
                for payload in payloads:
                    for rid, status, body in wire.decode_batch(payload):
                        entry = self._pending.pop(rid, None)
                        if entry is not None and not entry[0].done():
                            entry[0].set_result((status, body))
                        elif rid == 0:  # the node could not read what was sent: a bug here
                            error = ConnectionError(f"node refused a frame: {body}")
        except (OSError, ValueError, FrameError) as e:
            error = ConnectionError(f"wire connection failed: {e!r}")
        finally:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._writer.close()

    def close(self) -> None:
        self._task.cancel()
        self._fail(ConnectionError("client closed"))

    async def wait_closed(self) -> None:
        await asyncio.wait([self._task])
